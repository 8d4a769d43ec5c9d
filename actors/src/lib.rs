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
//!
//! Conversations and shards are placed on the cluster's members (`sting_cluster`): the owner
//! activates the actor after claiming its lease (`ownership`), and other nodes reach it with the
//! requests of [`remote`].

pub mod conversation;
pub mod ingestion;
pub mod jar_shard;
pub mod model;
mod ownership;
pub mod remote;
pub mod session;
mod supervision;
