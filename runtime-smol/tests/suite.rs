//! The behaviour suite (`runtime_core::testing`, defined once) on smol, over TCP + TLS on 127.0.0.1.

runtime_core::behaviour_suite!(runtime_smol::runtime(), smol::block_on);

/// The same suite with the tunnel in a WebSocket over TLS (`wss://`).
mod over_websocket {
    runtime_core::behaviour_suite!(runtime_smol::runtime(), smol::block_on, over = WebSocket);
}
