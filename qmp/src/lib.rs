//! ringmirror-qmp
