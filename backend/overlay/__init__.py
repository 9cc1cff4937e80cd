"""Provides flannel's subnet leasing on the etcd v3 API."""
