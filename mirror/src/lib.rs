//! ringmirror-mirror
