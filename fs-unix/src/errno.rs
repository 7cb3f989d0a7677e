//! The one mapping of the core's errors to errno values. It is a single exhaustive `match` with
//! no catch-all arm, so a new `FsError` variant does not compile until this adapter decides what
//! the kernel should see for it.

use fs_core::FsError;

/// The errno the kernel (and so the calling program) sees for `e`.
pub fn errno(e: &FsError) -> i32 {
    match e {
        FsError::NotFound => libc::ENOENT,
        FsError::Exists => libc::EEXIST,
        FsError::NotADirectory => libc::ENOTDIR,
        FsError::IsADirectory => libc::EISDIR,
        FsError::NotEmpty => libc::ENOTEMPTY,
        FsError::InvalidName => libc::EINVAL,
        FsError::NameTooLong => libc::ENAMETOOLONG,
        FsError::InvalidArgument => libc::EINVAL,
        FsError::NotSupported => libc::EOPNOTSUPP,
        FsError::NotPermitted => libc::EPERM,
        FsError::PermissionDenied => libc::EACCES,
        FsError::ReadOnly => libc::EROFS,
        FsError::NoSpace => libc::ENOSPC,
        FsError::FileTooLarge => libc::EFBIG,
        FsError::BadHandle => libc::EBADF,
        // ENETDOWN or EHOSTUNREACH would say more, but programs reading files do not expect
        // network errors from read(2) or open(2) and many treat anything unknown as fatal in
        // odd ways; EIO is the error they handle ("the data cannot be read right now").
        FsError::Offline => libc::EIO,
        FsError::TimedOut => libc::ETIMEDOUT,
        FsError::Io(_) => libc::EIO,
    }
}

/// [`errno`] as fuser's type.
pub(crate) fn fuse_errno(e: &FsError) -> fuser::Errno {
    fuser::Errno::from_i32(errno(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_positive_errno() {
        // Listing every variant here too keeps this test honest when one is added.
        let all = [
            FsError::NotFound,
            FsError::Exists,
            FsError::NotADirectory,
            FsError::IsADirectory,
            FsError::NotEmpty,
            FsError::InvalidName,
            FsError::NameTooLong,
            FsError::InvalidArgument,
            FsError::NotSupported,
            FsError::NotPermitted,
            FsError::PermissionDenied,
            FsError::ReadOnly,
            FsError::NoSpace,
            FsError::FileTooLarge,
            FsError::BadHandle,
            FsError::Offline,
            FsError::TimedOut,
            FsError::Io("disk on fire".into()),
        ];
        for e in &all {
            assert!(errno(e) > 0, "{e:?}");
            assert_eq!(fuse_errno(e).code(), errno(e), "{e:?}");
        }
    }

    #[test]
    fn the_usual_suspects() {
        assert_eq!(errno(&FsError::NotFound), libc::ENOENT);
        assert_eq!(errno(&FsError::Exists), libc::EEXIST);
        assert_eq!(errno(&FsError::NotEmpty), libc::ENOTEMPTY);
        assert_eq!(errno(&FsError::NotPermitted), libc::EPERM);
        assert_eq!(errno(&FsError::NotSupported), libc::EOPNOTSUPP);
        assert_eq!(errno(&FsError::ReadOnly), libc::EROFS);
        assert_eq!(errno(&FsError::Offline), libc::EIO);
        assert_eq!(errno(&FsError::TimedOut), libc::ETIMEDOUT);
        assert_eq!(errno(&FsError::Io("x".into())), libc::EIO);
    }
}
