"""Outbound HTTP: canonical origins, the SSRF guard at connect time, and the pooled client for jobs and webhooks."""
