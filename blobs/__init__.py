"""The hub's blob store: task inputs and results as content-addressed files (SHA-256),
uploaded in chunks and resumable by offset, indexed in Redis (holdings per account, pins per
task, results kept for a while), shared by the web and the pool (two processes, one
directory). ``store.BlobStore`` is the only entry point."""
