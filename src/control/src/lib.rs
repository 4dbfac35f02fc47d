//! The one control surface: every mutation, from the CLI, the API, a peer or a schedule, is an
//! `Action` handled in one place. (Being written.)
#![forbid(unsafe_code)]
