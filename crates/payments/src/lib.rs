//! The payments service (issue 7). Work in progress.
