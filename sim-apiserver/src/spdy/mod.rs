//! A minimal SPDY/3.1 server, the transport of kubectl's legacy exec/attach/port-forward
//! (`Upgrade: SPDY/3.1`) and, tunnelled through WebSocket binary messages, of its port-forward
//! (`SPDY/3.1+portforward.k8s.io`): [`frame`] (sans-IO framing and header compression),
//! [`session`] (streams over a byte stream), [`tunnel`] (SPDY bytes over WebSocket).

pub mod frame;
pub mod session;
pub mod tunnel;
