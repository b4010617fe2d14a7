//! libpstorage
