//! A subscriber's viewers: the WebSocket side of RFC 6455 (`websocket`), SSE on the raw socket
//! (`sse`), one task per viewer connection (`connection`), each viewer's sending side
//! (`outlet`), and the lanes that offer every frame to every viewer of its stream (`lanes`).

pub mod connection;
pub mod lanes;
pub mod outlet;
pub mod sse;
pub mod websocket;
