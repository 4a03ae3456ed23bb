package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/scopewatch/scopewatch/internal/config"
)

// inbox watches the inbox folder. Layout: inbox/IMAGE belongs to slide
// slides.default_id; inbox/SLIDE/IMAGE to SLIDE; inbox/SLIDE/.done (the
// marker) completes SLIDE once every image before it was taken;
// inbox/SLIDE/manifest.json {"kind": "crop"|"field"} overrides images.kind.
//
// A file is taken when its size and mtime stayed the same for
// inbox.stable_for: a file renamed into place is complete at once, but the
// inbox cannot tell it from one still being written, so it waits too.
// Notifications trigger scans early (and cannot be starved by steady writes);
// the periodic rescan catches anything they missed (overflow, network
// file systems).
type inbox struct {
	inboxDeps
	mu       sync.Mutex
	inFlight map[string]string // path -> slide
	seen     map[string]fileSig
	watched  map[string]bool
}

type fileSig struct {
	size  int64
	mtime time.Time
	since time.Time // first time this signature was seen
	first time.Time // first time the path was seen, whatever its signature
	told  bool      // logged as stuck
}

// inboxDeps is what the inbox needs of the daemon, given at construction.
type inboxDeps struct {
	log     *slog.Logger
	config  func() config.Config
	now     func() time.Time
	metrics *serveMetrics
	// submit queues an image for analysis; false when the queue is full.
	submit func(job) bool
	// completeSlide completes an open slide (a .complete marker).
	completeSlide func(ctx context.Context, slide, reason string) (slideSummary, bool, error)
	// hasImage reports whether slide/name is already stored.
	hasImage func(ctx context.Context, slide, name string) (bool, error)
	// attempts counts, across restarts, how often a file was taken without
	// being handled (see maxAttempts).
	attempts attemptStore
}

// attemptStore is the part of the daemon's store that remembers files
// being analysed.
type attemptStore interface {
	beginAttempt(ctx context.Context, path string) (int, error)
	endAttempt(ctx context.Context, path string) error
}

// maxAttempts is how many times a file may be taken without being handled
// (the daemon died or the store failed each time) before it is quarantined:
// a file that crashes the daemon must not crash it forever.
const maxAttempts = 3

func newInbox(deps inboxDeps) *inbox {
	return &inbox{inboxDeps: deps, inFlight: map[string]string{}, seen: map[string]fileSig{}, watched: map[string]bool{}}
}

func (in *inbox) prepare() error {
	cfg := in.config()
	for _, dir := range []string{cfg.Inbox.Dir, cfg.Inbox.QuarantineDir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("inbox: %w", err)
		}
	}
	if cfg.Inbox.AfterProcess == "move" {
		if err := os.MkdirAll(cfg.Inbox.DoneDir, 0o750); err != nil {
			return fmt.Errorf("inbox: %w", err)
		}
	}
	return nil
}

// busy reports whether images of slide are queued or in progress.
func (in *inbox) busy(slide string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, s := range in.inFlight {
		if s == slide {
			return true
		}
	}
	return false
}

func (in *inbox) run(ctx context.Context) {
	cfg := in.config()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		in.log.Warn("file notifications unavailable; relying on rescans", "err", err)
	} else {
		defer w.Close()
		in.watch(w, cfg.Inbox.Dir)
	}
	rescan := time.NewTicker(cfg.Inbox.RescanInterval)
	defer rescan.Stop()
	settle := cfg.Inbox.StableFor / 2
	if settle < 100*time.Millisecond {
		settle = 100 * time.Millisecond
	}
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		events, errs = w.Events, w.Errors
	}
	// soon fires while files are waiting to become stable, and shortly
	// after the first file event of a burst. Later events of the burst do
	// not push it back: under steady writes a debounce that restarts on
	// every event would never scan.
	soon := time.NewTimer(0)
	defer soon.Stop()
	armed := true
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Has(fsnotify.Create) {
				if st, err := os.Stat(ev.Name); err == nil && st.IsDir() && w != nil {
					in.watch(w, ev.Name)
				}
			}
			if !armed {
				resetTimer(soon, settle/2)
				armed = true
			}
			continue
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			in.log.Warn("file notification error; rescanning", "err", err)
		case <-rescan.C:
		case <-soon.C:
			armed = false
		}
		if pending := in.scan(ctx, w); pending {
			resetTimer(soon, settle)
			armed = true
		}
	}
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}

func (in *inbox) watch(w *fsnotify.Watcher, dir string) {
	if in.watched[dir] {
		return
	}
	if err := w.Add(dir); err != nil {
		in.log.Warn("cannot watch folder; relying on rescans", "dir", dir, "err", err)
		return
	}
	in.watched[dir] = true
}

// scan takes every stable image, completes marked slides, and reports
// whether some files are still settling.
func (in *inbox) scan(ctx context.Context, w *fsnotify.Watcher) (pending bool) {
	cfg := in.config()
	root := cfg.Inbox.Dir
	entries, err := os.ReadDir(root)
	if err != nil {
		in.log.Error("reading inbox failed", "dir", root, "err", err)
		in.metrics.errors.WithLabelValues("inbox").Inc()
		return false
	}
	live := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(root, name)
		if e.IsDir() {
			if strings.HasPrefix(name, ".") {
				continue
			}
			if !config.ValidSlideID(name) {
				in.quarantineFolder(p, name)
				continue
			}
			if w != nil {
				in.watch(w, p)
			}
			if in.scanSlide(ctx, p, name, live) {
				pending = true
			}
			continue
		}
		if in.consider(ctx, p, cfg.Slides.DefaultID, "", live) {
			pending = true
		}
	}
	now := in.now()
	var oldest time.Duration
	var stuck []string
	in.mu.Lock()
	for p, sig := range in.seen {
		if !live[p] {
			delete(in.seen, p)
			continue
		}
		wait := now.Sub(sig.first)
		oldest = max(oldest, wait)
		if wait >= cfg.Inbox.StuckAfter && !sig.told {
			sig.told = true
			in.seen[p] = sig
			stuck = append(stuck, p)
		}
	}
	in.mu.Unlock()
	in.metrics.inboxOldest.Set(oldest.Seconds())
	for _, p := range stuck {
		// Nothing waits in the inbox unseen: a file still being written,
		// a queue that stays full or a store that keeps failing shows here.
		in.log.Warn("image waiting in the inbox", "path", p, "waiting", cfg.Inbox.StuckAfter.String(),
			"hint", "still being written (size or mtime changing), the image queue full, or storing it failing; see the errors metric")
		in.metrics.inboxStuck.Inc()
	}
	return pending
}

type slideManifest struct {
	Kind string `json:"kind"`
}

func (in *inbox) scanSlide(ctx context.Context, dir, slide string, live map[string]bool) (pending bool) {
	cfg := in.config()
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			in.log.Warn("reading slide folder failed", "dir", dir, "err", err)
		}
		return false
	}
	kind := ""
	if data, err := os.ReadFile(filepath.Join(dir, "manifest.json")); err == nil {
		var m slideManifest
		if err := json.Unmarshal(data, &m); err != nil || (m.Kind != "" && !slices.Contains(config.ImageKinds, m.Kind)) {
			in.log.Warn("slide manifest ignored: want {\"kind\": \"crop\"|\"field\"|\"auto\"}", "file", filepath.Join(dir, "manifest.json"), "err", err)
		} else {
			kind = m.Kind
		}
	}
	marker := false
	images := 0
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() {
			continue
		}
		if name == cfg.Slides.Marker {
			marker = true
			continue
		}
		if !isImageName(name, cfg.Inbox.Extensions) {
			continue
		}
		images++
		if in.consider(ctx, filepath.Join(dir, name), slide, kind, live) {
			pending = true
		}
	}
	if marker && images == 0 && !in.busy(slide) {
		in.finishSlide(ctx, dir, slide)
	}
	return pending
}

// isImageName reports whether name has one of the inbox.extensions and is
// not hidden.
func isImageName(name string, exts []string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	ext := filepath.Ext(name)
	for _, e := range exts {
		if strings.EqualFold(e, ext) {
			return true
		}
	}
	return false
}

// finishSlide completes a marked slide and clears its folder.
func (in *inbox) finishSlide(ctx context.Context, dir, slide string) {
	cfg := in.config()
	_, ok, err := in.completeSlide(ctx, slide, "marker")
	if err != nil {
		in.log.Error("completing slide failed; retrying on next scan", "slide", slide, "err", err)
		return
	}
	if !ok {
		in.log.Info("marker for a slide with nothing open; removed", "slide", slide)
	}
	// Only after the commit: a crash before this line finds the marker
	// again and the completion is a no-op.
	if err := os.Remove(filepath.Join(dir, cfg.Slides.Marker)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		in.log.Warn("removing marker failed", "dir", dir, "err", err)
	}
	os.Remove(filepath.Join(dir, "manifest.json"))
	os.Remove(dir) // fails (and is kept) if something else is in it
}

// consider queues path when it is a stable image not already queued.
func (in *inbox) consider(ctx context.Context, path, slide, kind string, live map[string]bool) (pending bool) {
	cfg := in.config()
	name := filepath.Base(path)
	if !isImageName(name, cfg.Inbox.Extensions) {
		return false
	}
	live[path] = true
	in.mu.Lock()
	_, busy := in.inFlight[path]
	in.mu.Unlock()
	if busy {
		return false
	}
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() {
		return false
	}
	now := in.now()
	in.mu.Lock()
	sig, ok := in.seen[path]
	if !ok || sig.size != st.Size() || !sig.mtime.Equal(st.ModTime()) {
		first, told := now, false
		if ok {
			first, told = sig.first, sig.told
		}
		sig = fileSig{size: st.Size(), mtime: st.ModTime(), since: now, first: first, told: told}
		in.seen[path] = sig
	}
	in.mu.Unlock()
	if cfg.Inbox.StableFor > 0 && now.Sub(sig.since) < cfg.Inbox.StableFor {
		return true
	}
	// A file re-seen after a crash between commit and move is already
	// stored: move it along without counting it again.
	if done, err := in.hasImage(ctx, slide, name); err == nil && done {
		in.log.Info("image already stored; moving it on", "slide", slide, "image", name)
		in.afterOK(path, slide)
		return false
	}
	if st.Size() > cfg.Images.MaxBytes {
		in.quarantine(path, slide, fmt.Sprintf("file is %d bytes, above images.max_bytes=%d", st.Size(), cfg.Images.MaxBytes))
		in.metrics.errors.WithLabelValues("too_large").Inc()
		in.metrics.images.WithLabelValues("inbox", "rejected").Inc()
		return false
	}
	n, err := in.attempts.beginAttempt(ctx, path)
	if err != nil {
		in.log.Error("recording the attempt failed; will retry", "path", path, "err", err)
		return true
	}
	if n > maxAttempts {
		in.quarantine(path, slide, fmt.Sprintf("taken %d times without being handled (the daemon stopped or the store failed while analysing it); quarantined so that it cannot stop the daemon again", n-1))
		in.metrics.images.WithLabelValues("inbox", "poison").Inc()
		in.endAttempt(path)
		return false
	}
	in.mu.Lock()
	in.inFlight[path] = slide
	in.mu.Unlock()
	ok = in.submit(job{
		slide: slide, name: name, source: "inbox", kind: kind, path: path,
		done: func(r jobResult) { in.after(path, slide, r) },
	})
	if !ok {
		in.mu.Lock()
		delete(in.inFlight, path)
		in.mu.Unlock()
		in.endAttempt(path) // not analysed: a full queue is no attempt
		return true         // queue full: try again soon
	}
	return false
}

func (in *inbox) endAttempt(path string) {
	if err := in.attempts.endAttempt(context.Background(), path); err != nil {
		in.log.Warn("clearing the attempt failed; a later restart may count it", "path", path, "err", err)
	}
}

// after moves a processed file on: done (or deleted) when stored or
// skipped, quarantine with a .reason file when refused.
func (in *inbox) after(path, slide string, r jobResult) {
	defer func() {
		in.mu.Lock()
		delete(in.inFlight, path)
		delete(in.seen, path)
		in.mu.Unlock()
	}()
	var bad *badImageError
	// clearAttempt: the file is handled and its attempt must be forgotten
	// here (a stored image's was forgotten by the storing transaction).
	clearAttempt := true
	defer func() {
		if clearAttempt {
			in.endAttempt(path)
		}
	}()
	switch {
	case r.err == nil:
		clearAttempt = false
		in.afterOK(path, slide)
	case errors.As(r.err, &bad):
		in.log.Warn("image quarantined", "path", path, "slide", slide, "reason", bad.Reason, "err", r.err)
		in.quarantine(path, slide, r.err.Error())
	case errors.Is(r.err, errSlideComplete):
		in.log.Warn("image for a completed slide not counted", "path", path, "slide", slide)
		in.quarantine(path, slide, r.err.Error()+": the slide's count is final; use a new slide id")
	case errors.Is(r.err, errDuplicateImage):
		in.afterOK(path, slide)
	default:
		// Storage failed: leave the file where it is for the next scan,
		// and its attempt counted.
		clearAttempt = false
		in.log.Error("image not stored; will retry", "path", path, "err", r.err)
	}
}

func (in *inbox) afterOK(path, slide string) {
	cfg := in.config()
	if cfg.Inbox.AfterProcess == "delete" {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			in.log.Error("deleting processed image failed", "path", path, "err", err)
		}
		return
	}
	if _, err := moveInto(path, filepath.Join(cfg.Inbox.DoneDir, slide)); err != nil {
		in.log.Error("moving processed image failed", "path", path, "err", err)
	}
}

func (in *inbox) quarantine(path, slide, reason string) {
	cfg := in.config()
	dst, err := moveInto(path, filepath.Join(cfg.Inbox.QuarantineDir, slide))
	if err != nil {
		in.log.Error("quarantining image failed", "path", path, "err", err)
		return
	}
	note := fmt.Sprintf("%s\nfile: %s\nslide: %s\ntime: %s\n", reason, path, slide, in.now().UTC().Format(time.RFC3339))
	if err := os.WriteFile(dst+".reason", []byte(note), 0o640); err != nil {
		in.log.Error("writing quarantine reason failed", "path", dst, "err", err)
	}
}

// invalidSlides is the quarantine folder of inbox folders whose name is not
// a slide id; starting with "." it can never be one.
const invalidSlides = ".invalid-slide-ids"

// quarantineFolder moves a slide folder whose name cannot be a slide id,
// with everything in it, to the quarantine with the reason beside it: left
// in the inbox it would never be counted and never be told about again.
func (in *inbox) quarantineFolder(path, name string) {
	cfg := in.config()
	dst, err := moveInto(path, filepath.Join(cfg.Inbox.QuarantineDir, invalidSlides))
	if err != nil {
		in.log.Error("quarantining a folder that is not a slide id failed; it stays in the inbox", "dir", path, "err", err)
		in.metrics.errors.WithLabelValues("inbox").Inc()
		return
	}
	reason := fmt.Sprintf("folder name %q is not a slide id: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', '-', not starting with '.'; rename it and move it back into the inbox", name)
	in.log.Warn("inbox folder quarantined: not a slide id", "dir", path, "to", dst, "reason", reason)
	in.metrics.images.WithLabelValues("inbox", "quarantined_folder").Inc()
	note := fmt.Sprintf("%s\nfolder: %s\ntime: %s\n", reason, path, in.now().UTC().Format(time.RFC3339))
	if err := os.WriteFile(dst+".reason", []byte(note), 0o640); err != nil {
		in.log.Error("writing quarantine reason failed", "path", dst, "err", err)
	}
}

// moveInto renames path into dir, keeping its name unless taken (then a
// numeric suffix is added), and returns the new path.
func moveInto(path, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	base := filepath.Base(path)
	dst := filepath.Join(dir, base)
	ext := filepath.Ext(base)
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, fs.ErrNotExist) {
			break
		}
		dst = filepath.Join(dir, fmt.Sprintf("%s.%d%s", strings.TrimSuffix(base, ext), i, ext))
	}
	if err := os.Rename(path, dst); err != nil {
		return "", err
	}
	return dst, nil
}
