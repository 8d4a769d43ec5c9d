//! `sting-actors`: Sting's supervised actors, one module per actor kind, each with its
//! messages and the domain logic it owns.
//!
//! Supervision tree of a node (grows with later capabilities):
//!
//! ```text
//! ChildSupervisor<SessionActor> ── SessionActor (one per active login session)
//! ChildSupervisor<ConversationActor> ── ConversationActor (one per active conversation)
//! IngestionPipeline ── DocumentIngestion (one per document being processed)
//! ChildSupervisor<JarShardActor> ── JarShardActor (one per active honey-jar shard)
//! ModelPool ── ModelWorker (one per loaded model)
//! ```
//!
//! One generic supervisor (`supervision::ChildSupervisor`) serves every kind whose children are
//! named, activated on demand and passivate themselves.

pub mod conversation;
pub mod ingestion;
pub mod jar_shard;
pub mod model;
pub mod session;
mod supervision;
