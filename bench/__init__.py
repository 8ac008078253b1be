"""The benchmarks (``make bench``): scripts, each run as ``python bench/<name>.py``; a
package only so that mypy names them ``bench.<name>``."""
