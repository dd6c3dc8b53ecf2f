//! Who is who in a twill cluster: the cluster's certificate authority, the identity a
//! certificate carries, join tokens, and the TLS settings both ends of a connection use.
//!
//! - [`ca`]: the CA the first controller member creates and the cluster replicates; it signs
//!   members', nodes' and admins' certificates;
//! - [`identity`]: the role and name in a certificate (a `twill:` URI in its SAN);
//! - [`token`]: kubeadm-style join tokens, `abcdef.0123456789abcdef`;
//! - [`credentials`]: a certificate, its key and the CA, as files and as tonic TLS settings;
//! - [`bootstrap`]: learning the CA from a member when only its hash is known.

pub mod bootstrap;
pub mod ca;
pub mod credentials;
pub mod identity;
pub mod token;

pub use ca::{Ca, CaError};
pub use credentials::{Credentials, CredentialsError};
pub use identity::{Identity, Role};
pub use token::Token;

/// The name every member's certificate carries and every client checks: it marks a
/// certificate as a controller member's, so a node's or admin's certificate can never pose as
/// a controller, whatever address the member is reached at.
pub const MEMBER_SERVER_NAME: &str = "controller.twill.internal";
