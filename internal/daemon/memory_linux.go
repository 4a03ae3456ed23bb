//go:build linux

package daemon

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// releaseFilePages drops the process's page-table entries for the pages of
// its read-only file mappings: the shared libraries OpenCV links (GDAL,
// Qt, FFmpeg, poppler and some 250 more, which gocv pulls in whole), ONNX
// Runtime and the executable's code and constants. Most of those pages
// were touched once, by the dynamic loader's relocations and the
// libraries' constructors, or while ONNX Runtime built its session, and
// are never used again; on kernels that map page-cache folios whole they
// make up about two thirds of the resident set.
//
// MADV_DONTNEED on a private file mapping discards private copies of
// pages, so it is only applied to mappings that cannot be written and
// hold no private (anonymous) page: every page is then the file's own
// page-cache page. Only mappings that stay for the life of the process
// are touched, so that no range read from smaps can have been unmapped
// and reused for other memory before the advice lands: the executable,
// the libraries mapped at the first call (linked at exec; ld.so never
// unloads those) and ONNX Runtime (opened once, never closed). A library
// opened later by someone else (an OpenCL or codec plugin) is left alone,
// as it might be closed. Libraries are recognised by their exact mapping
// (address range and inode) at the first call, not by path: a file
// replaced on disk and opened again under the same path is a new mapping.
// Nothing is released while a debugger or tracer is attached: breakpoints
// write private copies of code pages after smaps was read. Pages still in use come back on their next access, a
// minor fault served from the page cache; the others stay in the page
// cache, free for the kernel to drop. It returns the file-backed resident
// set before and after, in kB.
func releaseFilePages() (before, after int64, err error) {
	before = rssFileKB()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return before, before, fmt.Errorf("release file pages: %w", err)
	}
	if procStatusValue("TracerPid") != 0 {
		return before, before, errors.New("release file pages: the process is traced")
	}
	exe, _ := os.Readlink("/proc/self/exe")
	lasting := lastingLibraries(smaps)
	for _, m := range cleanFileMappings(smaps, func(path string) bool { return path == exe || isSharedObject(path) }) {
		if m.path != exe && !isONNXRuntime(m.path) && lasting[mapping{start: m.start, end: m.end}] != m.inode+1 {
			continue
		}
		// A mapping the kernel refuses (locked, a device) stays as it is.
		syscall.Syscall(syscall.SYS_MADVISE, m.start, m.end-m.start, syscall.MADV_DONTNEED)
	}
	return before, rssFileKB(), nil
}

// mapping is one file mapping of /proc/self/smaps (inode and path are
// left zero in the keys of lastingLibraries).
type mapping struct {
	start, end uintptr
	inode      uint64
	path       string
}

var (
	lastingOnce sync.Once
	lasting     map[mapping]uint64
)

// lastingLibraries returns the read-only shared-object mappings present at
// its first call, by address range, each with its inode plus one (so that
// a missing range reads as 0).
func lastingLibraries(smaps []byte) map[mapping]uint64 {
	lastingOnce.Do(func() {
		lasting = map[mapping]uint64{}
		for _, m := range cleanFileMappings(smaps, isSharedObject) {
			lasting[mapping{start: m.start, end: m.end}] = m.inode + 1
		}
	})
	return lasting
}

// isONNXRuntime reports whether path is ONNX Runtime's library, which is
// opened once and never closed.
func isONNXRuntime(path string) bool {
	return strings.HasPrefix(path[strings.LastIndexByte(path, '/')+1:], "libonnxruntime.so")
}

// isSharedObject reports whether path names a shared library (lib.so,
// lib.so.1.2).
func isSharedObject(path string) bool {
	base := path[strings.LastIndexByte(path, '/')+1:]
	return strings.HasSuffix(base, ".so") || strings.Contains(base, ".so.")
}

// cleanFileMappings parses /proc/PID/smaps and returns the mappings of
// files accepted by want, without write permission and without anonymous
// pages.
func cleanFileMappings(smaps []byte, want func(path string) bool) []mapping {
	var (
		out  []mapping
		cur  mapping
		keep bool // cur is a read-only file mapping
		anon int64
	)
	flush := func() {
		if keep && anon == 0 {
			out = append(out, cur)
		}
		keep, anon = false, 0
	}
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") {
			// A mapping's header: "start-end perms offset dev inode [path]".
			flush()
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			// A seventh field is " (deleted)" (or a path with spaces:
			// left alone as well).
			keep = err1 == nil && err2 == nil && b > a && len(f) == 6 &&
				strings.HasPrefix(f[5], "/") && len(f[1]) == 4 && f[1][1] == '-' && want(f[5])
			ino, _ := strconv.ParseUint(f[4], 10, 64)
			cur = mapping{start: uintptr(a), end: uintptr(b), inode: ino}
			if keep {
				cur.path = f[5]
			}
			continue
		}
		if f[0] == "Anonymous:" && len(f) >= 2 {
			anon, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	flush()
	return out
}

// rssFileKB is RssFile from /proc/self/status (0 when unreadable).
func rssFileKB() int64 { return procStatusValue("RssFile") }

// procStatusValue is the number after key: in /proc/self/status (0 when
// unreadable).
func procStatusValue(key string) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			fs := strings.Fields(v)
			if len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n
			}
		}
	}
	return 0
}
