//! ringmirror-bitmap
