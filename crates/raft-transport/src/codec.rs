//! The payload encoding: a format tag, then postcard.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Format tag of a postcard-encoded payload. A new encoding gets a new tag, so that a process
/// never misreads a peer running another version.
pub const FORMAT_POSTCARD: u8 = 1;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the Raft payload is empty")]
    Empty,
    #[error("the Raft payload has unknown format tag {0}")]
    UnknownFormat(u8),
    #[error("the Raft payload could not be encoded or decoded: {0}")]
    Postcard(#[from] postcard::Error),
}

/// Encodes `value` as a tagged payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, CodecError> {
    let out = postcard::to_extend(value, vec![FORMAT_POSTCARD])?;
    Ok(Bytes::from(out))
}

/// Decodes a tagged payload.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, CodecError> {
    match payload.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_POSTCARD, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((tag, _)) => Err(CodecError::UnknownFormat(*tag)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::error::Fatal;
    use openraft::raft::{VoteRequest, VoteResponse};

    /// A payload survives encode/decode; a wrong tag or an empty payload is refused.
    #[test]
    fn codec_round_trip_and_tag() {
        let vote: VoteRequest<u64> = VoteRequest::new(openraft::Vote::new(3, 1), None);
        let bytes = encode(&vote).unwrap();
        assert_eq!(bytes[0], FORMAT_POSTCARD);
        let back: VoteRequest<u64> = decode(&bytes).unwrap();
        assert_eq!(back, vote);
        let mut wrong = bytes.to_vec();
        wrong[0] = 99;
        assert!(matches!(
            decode::<VoteRequest<u64>>(&wrong),
            Err(CodecError::UnknownFormat(99))
        ));
        assert!(matches!(
            decode::<VoteRequest<u64>>(&[]),
            Err(CodecError::Empty)
        ));
    }

    /// A fatal Raft answer travels as data and comes back as the same error.
    #[test]
    fn fatal_answer_round_trip() {
        let answer: Result<VoteResponse<u64>, Fatal<u64>> = Err(Fatal::Stopped);
        let back: Result<VoteResponse<u64>, Fatal<u64>> =
            decode(&encode(&answer).unwrap()).unwrap();
        assert_eq!(back, Err(Fatal::Stopped));
    }
}
