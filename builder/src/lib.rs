//! # envd-builder
//!
//! The host side of envd-rs and its `envd` command: it evaluates `build.envd`, compiles it to
//! BuildKit LLB, builds the image, runs the environment and connects the user to it.
//!
//! **Status:** [`runtime`] (finding and checking the static in-container binaries) is here; the
//! Starlark front end, LLB, BuildKit client and `envd up` arrive with issues 5 and 6.

pub mod runtime;
