//! # envd-builder
//!
//! The host side of envd-rs and its `envd` command: it evaluates `build.envd`, compiles it to
//! BuildKit LLB, builds the image, runs the environment and connects the user to it.
//!
//! - [`lang`]: the Starlark front end (envd's v1 API) that evaluates a build file into a [`graph::Graph`];
//! - [`runtime`]: finding and checking the static in-container binaries.
//!
//! **Status:** LLB, the BuildKit client, `envd build` and `envd up` are not written yet (issues 5
//! and 6).

pub mod build;
pub mod buildkit;
pub mod compile;
pub mod docker;
pub mod graph;
pub mod lang;
pub mod runtime;
