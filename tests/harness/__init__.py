"""Provides the test harness: real etcd, real sshd and the bundled store as child processes."""
