"""One module per public dataset format; each turns its inputs into shards (see pipelines.shards)."""
