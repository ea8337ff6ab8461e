//! # conformance: wire test vectors and a black-box harness for agentk and kas
//!
//! Two products, for anyone writing another agentk or kas (and for our own):
//!
//! - **Vectors** (`conformance/vectors/*.json`): octets ⇄ meaning for every frame type and flag, the
//!   handshake messages, and malformed input with the reaction it must produce. [`spec`] reads the
//!   tables of `protocol/PROTOCOL.md`; [`vectors::generate`] builds every vector from them (octets
//!   from a hand-written header and the protobuf messages, expectations from the tables);
//!   [`vectors::check`] runs them through the reference codec and connection. The tests fail when the
//!   committed files differ from what the generator makes of the current specification, so spec and
//!   code cannot drift apart silently.
//! - **Harness** (binary `conformance agentk|kas --cmd '...'`): starts the implementation under test
//!   with `sh -c` and plays the other side over real sockets — a scripted kas against an agentk
//!   ([`agentk_suite`]), scripted agents and HTTP clients against a kas ([`kas_suite`]). Only the
//!   sockets are shared with the implementation: the scripted peers speak raw frames ([`wire`]) and
//!   check protocol rules (windows, stream limits, error codes) on what they observe. Every scenario
//!   is bounded in time and every child process is killed at its end ([`process`]); the output is one
//!   line per scenario and a final `N passed, M failed` ([`report`]).
//!
//! | module | what it is |
//! |---|---|
//! | [`spec`] | the `PROTOCOL.md` table parser |
//! | [`vectors`] | the vector model, generator and checker |
//! | [`wire`] | a blocking framed peer over TLS: send frames, receive with deadlines, watch flow control |
//! | [`tls`] | the harness's certificates and TLS endpoints |
//! | [`process`] | the implementation under test as a child process group, placeholders, kill |
//! | [`http`] | a minimal HTTP/1.1 client and request parser (API clients, the fake API server) |
//! | [`apiserver`] | a fake Kubernetes API server agentk's kubeconfig points at |
//! | [`report`] | scenario results and the summary line |
//! | [`agentk_suite`] | the scripted kas and its scenarios |
//! | [`kas_suite`] | the state directory, the scripted agents and API clients, and their scenarios |
//! | [`selftest`] | a minimal agent and a minimal kas with injectable faults: prove each check can fail |

pub mod agentk_suite;
pub mod apiserver;
pub mod http;
pub mod kas_suite;
pub mod process;
pub mod report;
pub mod selftest;
pub mod spec;
pub mod tls;
pub mod vectors;
pub mod wire;
