//! Hinted handoff (being written).
