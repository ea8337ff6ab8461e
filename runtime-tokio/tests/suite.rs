//! The behaviour suite (`runtime_core::testing`, defined once) on tokio (two worker threads), over
//! TCP + TLS on 127.0.0.1, and again with the tunnel in a WebSocket over that TLS.

/// Runs a scenario on a fresh two-worker tokio runtime.
fn block_on(f: runtime_core::BoxFuture<Option<()>>) -> Option<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

runtime_core::behaviour_suite!(runtime_tokio::runtime(), crate::block_on);

/// The same suite with the tunnel in a WebSocket over TLS (`wss://`).
mod over_websocket {
    runtime_core::behaviour_suite!(runtime_tokio::runtime(), crate::block_on, over = WebSocket);
}
