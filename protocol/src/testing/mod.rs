//! Test support, compiled only with the `testing` feature (tests, the simulator, the conformance
//! self-tests): never part of a production build.
//!
//! | module | what it is |
//! |---|---|
//! | [`naive_views`] | an independent, from-scratch evaluator of view specs: the oracle for views |
//! | [`faults`] | deliberate bugs that can be switched on in the production view evaluator, to prove the oracle catches what a comparison with [`ViewSet::recompute`](crate::cache::ViewSet::recompute) cannot |

pub mod faults;
pub mod naive_views;
