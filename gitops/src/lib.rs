//! GitOps (placeholder while agent-config builds).
#![warn(missing_docs)]
