"""The store's HTTP/1.1 side, on the gRPC port: /health, /version, /metrics, the v3 JSON
gateway and the v2 keys API, as etcd serves them beside gRPC."""
