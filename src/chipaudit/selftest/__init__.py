"""The self-test: the audit's detection power measured on simulated faulty devices built into the
package, and the per-bit detection curve of the matrix-product checker."""
