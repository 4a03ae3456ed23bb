//go:build !linux

package daemon

import "errors"

// releaseFilePages is Linux-only (madvise on /proc/self/smaps mappings).
func releaseFilePages() (before, after int64, err error) {
	return 0, 0, errors.ErrUnsupported
}
