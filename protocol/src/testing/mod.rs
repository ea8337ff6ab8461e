//! Test support, compiled only with the `testing` feature (tests, the simulator, the conformance
//! self-tests): never part of a production build.
//!
//! | module | what it is |
//! |---|---|
//! | [`naive_views`] | an independent, from-scratch evaluator of view specs: the oracle for views |
//! | [`pair`] | two connections back to back on a simulated clock (quinn-proto's `Pair`): the harness of the protocol's tests, benchmarks and fuzz targets |
//! | [`faults`] | deliberate bugs that can be switched on (per thread) in the production view evaluator and in flow control, to prove that the oracles and the simulator's checks catch them |

pub mod faults;
pub mod naive_views;
pub mod pair;
