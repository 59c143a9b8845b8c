//! The client side of the gateway: listener, startup and authentication, and the relay.

pub mod cancel;
pub mod gateway;
pub mod listener;
pub mod masking;
pub mod relay;
pub mod session;
pub mod startup;
pub mod stream;
pub mod workers;

pub use gateway::{Gateway, GatewayConfig, Stats};
