"""What a hospital node and the aggregation server share, below both: the wire contract (the plan sent to sites,
the record and metric keys, the site-name rule) and the deployment plumbing both sides use (endpoints, keys and
certificates, process control, connection diagnosis, the Control API client).
"""
