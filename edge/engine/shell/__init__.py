"""The job engine's Trio shell: one task and nursery per active queue key, outbound attempts, webhook delivery."""
