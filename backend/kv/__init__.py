"""Provides the bundled single-node store that speaks etcd's v3 gRPC API."""
