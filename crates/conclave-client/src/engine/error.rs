//! What can go wrong in the MLS engine, each with a message a person can act on.

/// An MLS engine failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// This device has no MLS group for the room.
    #[error("this device has no encryption state for room {0}; join the room first")]
    NoSuchRoom(String),
    /// The room already has an MLS group on this device.
    #[error("this device already has encryption state for room {0}")]
    RoomExists(String),
    /// The local database failed, or holds something unexpected.
    #[error("local MLS database: {0}")]
    Storage(String),
    /// OpenMLS refused an operation.
    #[error("MLS: {0}")]
    Mls(String),
    /// Bytes from outside (the server, another member) are not what they should be.
    #[error("malformed MLS data: {0}")]
    Malformed(String),
    /// The argument given is not valid here (a leaf that is not a member, an empty list…).
    #[error("{0}")]
    Invalid(String),
    /// This device was removed from the room: it can neither read nor send there.
    #[error("this device was removed from room {0}; it can no longer read or send there")]
    Evicted(String),
    /// A commit of this device for the room still waits for the server's answer.
    #[error(
        "a change to room {0} made on this device is still waiting for the server's answer; \
         wait for it (or discard it) before making another"
    )]
    CommitPending(String),
    /// A commit in the room's log cannot be applied: this device's state no
    /// longer matches the group, and the device must rejoin by external commit.
    #[error(
        "cannot apply the change at sequence number {seq} of room {room} ({reason}); \
         this device is out of step with the room and must rejoin it"
    )]
    OutOfStep {
        /// The room.
        room: String,
        /// The log entry that could not be applied.
        seq: conclave_proto::Seq,
        /// Why.
        reason: String,
    },
}
