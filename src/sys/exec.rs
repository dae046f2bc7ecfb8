//! Replacing a child's program image: `execvp` and friends (filled in by the
//! command runner).
