//! prefold benchmarks. The harness, its anchors (nginx, a bare axum + moka
//! handler) and the micro benchmarks arrive with the benchmark issue; this
//! crate reserves the place in the workspace so that the layout is stable.
