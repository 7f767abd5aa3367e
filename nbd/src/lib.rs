//! ringmirror-nbd
