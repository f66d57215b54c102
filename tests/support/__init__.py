"""Test support: the throwaway PostgreSQL and pooler config (cluster), the pooler subprocess (pooler),
and a raw-protocol client (wire)."""
