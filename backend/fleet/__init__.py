"""Provides fleet's scheduler re-built on the etcd v3 API: unit files, registry, engine, agent."""
