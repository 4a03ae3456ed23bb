package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/synth"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// A microscope that writes continuously: an image renamed into the inbox
// every 0.2 s, with the shipped stable_for (2 s) and a rescan too slow to
// help. Images must be taken while the writes go on, not when they stop.
func TestInboxTakesFilesUnderSteadyWrites(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) {
		c.Inbox.StableFor = 2 * time.Second
		c.Inbox.RescanInterval = time.Minute
	})
	slide := filepath.Join(td.cfg.Inbox.Dir, "steady")
	if err := os.MkdirAll(slide, 0o755); err != nil {
		t.Fatal(err)
	}
	staging := t.TempDir()
	img := pngBytes(t, 40, 40, 250)
	const n = 40
	arrived := map[string]time.Time{}
	var firstStoredWhileWriting bool
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("f%03d.png", i)
		tmp := filepath.Join(staging, name)
		if err := os.WriteFile(tmp, img, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(slide, name)); err != nil {
			t.Fatal(err)
		}
		arrived[name] = time.Now()
		if !firstStoredWhileWriting {
			var stored int
			td.d.db.db.QueryRow(`SELECT COUNT(*) FROM images`).Scan(&stored)
			firstStoredWhileWriting = stored > 0
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !firstStoredWhileWriting {
		t.Fatalf("no image was taken during %d steady writes (%.0f s): the inbox starves", n, float64(n)*0.2)
	}
	testutil.Eventually(t, 20*time.Second, func() bool {
		var stored int
		td.d.db.db.QueryRow(`SELECT COUNT(*) FROM images`).Scan(&stored)
		return stored == n
	}, "not every image was taken")
	rows, err := td.d.db.db.Query(`SELECT name, created_at FROM images`)
	if err != nil {
		t.Fatal(err)
	}
	var waits []time.Duration
	for rows.Next() {
		var name string
		var at int64
		rows.Scan(&name, &at)
		waits = append(waits, time.UnixMilli(at).Sub(arrived[name]))
	}
	rows.Close()
	slices.Sort(waits)
	t.Logf("rename to stored, %d images every 0.2 s, stable_for 2 s: median %v, max %v",
		len(waits), waits[len(waits)/2].Round(time.Millisecond), waits[len(waits)-1].Round(time.Millisecond))
}

// A slide folder whose name cannot be a slide id (a space, Cyrillic) is not
// left in the inbox for good: it is quarantined whole, with the reason.
func TestInboxQuarantinesFolderThatIsNoSlideID(t *testing.T) {
	td := startTestDaemon(t, nil)
	for _, name := range []string{"slide 17", "мазок-3"} {
		dir := filepath.Join(td.cfg.Inbox.Dir, name)
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "a.png"), pngBytes(t, 40, 40, 250), 0o644)
	}
	q := filepath.Join(td.cfg.Inbox.QuarantineDir, invalidSlides)
	testutil.Eventually(t, 10*time.Second, func() bool {
		a, _ := os.Stat(filepath.Join(q, "slide 17", "a.png"))
		b, _ := os.Stat(filepath.Join(q, "мазок-3", "a.png"))
		return a != nil && b != nil
	}, "folders not quarantined")
	reason, err := os.ReadFile(filepath.Join(q, "slide 17.reason"))
	if err != nil || !strings.Contains(string(reason), "not a slide id") {
		t.Fatalf("reason %q, %v", reason, err)
	}
	if _, err := os.Stat(filepath.Join(td.cfg.Inbox.Dir, "slide 17")); err == nil {
		t.Fatal("the folder is still in the inbox")
	}
	var stored int
	td.d.db.db.QueryRow(`SELECT COUNT(*) FROM images`).Scan(&stored)
	if stored != 0 {
		t.Fatalf("%d images of an unnamed slide counted", stored)
	}
}

// failingAnalyzer fails on one file name the way a crash inside the model
// would leave it: not analysed, nothing stored.
type failingAnalyzer struct {
	pixelAnalyzer
	fail []byte
}

func (a *failingAnalyzer) Analyze(ctx context.Context, data []byte, kind string) (analysis, error) {
	if bytes.Equal(data, a.fail) {
		return analysis{}, errors.New("the model stopped on this file")
	}
	return a.pixelAnalyzer.Analyze(ctx, data, kind)
}

// A file that is taken and never handled, across restarts, is quarantined
// after maxAttempts: it must not stop the daemon (or a slide) forever.
func TestInboxQuarantinesPoisonFile(t *testing.T) {
	dir := t.TempDir()
	poison := pngBytes(t, 41, 41, 250)
	model := &failingAnalyzer{fail: poison}
	fast := func(c *config.Config) { c.Inbox.RescanInterval = time.Hour }
	td := startTestDaemonWith(t, dir, model, fast)
	slide := filepath.Join(td.cfg.Inbox.Dir, "p1")
	os.MkdirAll(slide, 0o755)
	os.WriteFile(filepath.Join(slide, "poison.png"), poison, 0o644)
	os.WriteFile(filepath.Join(slide, "good.png"), pngBytes(t, 40, 40, 250), 0o644)
	attempts := func(d *Daemon) int {
		var n int
		d.db.db.QueryRow(`SELECT COALESCE(MAX(attempts), 0) FROM serve_attempts`).Scan(&n)
		return n
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return attempts(td.d) >= 1 }, "the attempt was not recorded")
	td.stop(t)
	// The count survives the restart, and the file keeps failing until the
	// guard takes it out.
	td = startTestDaemonWith(t, dir, model, func(c *config.Config) { c.Inbox.RescanInterval = 200 * time.Millisecond })
	reason := filepath.Join(td.cfg.Inbox.QuarantineDir, "p1", "poison.png.reason")
	testutil.Eventually(t, 20*time.Second, func() bool { _, err := os.Stat(reason); return err == nil }, "the poison file was not quarantined")
	note, _ := os.ReadFile(reason)
	if !strings.Contains(string(note), fmt.Sprintf("taken %d times", maxAttempts)) {
		t.Fatalf("reason %q", note)
	}
	if n := attempts(td.d); n != 0 {
		t.Fatalf("attempt left behind after the quarantine: %d", n)
	}
	var stored int
	td.d.db.db.QueryRow(`SELECT COUNT(*) FROM images WHERE name = 'good.png'`).Scan(&stored)
	if stored != 1 {
		t.Fatal("the good file of the same slide was not counted")
	}
}

// The shipped model refuses crops too small to be a cell at its scale (a
// 1x1 or 8x8 image used to be classified, as parasitized with p = 1) and
// still classifies a real-sized crop.
func TestModelRefusesThumbnailCrops(t *testing.T) {
	cfg := config.Default()
	cfg.Model.Path = requireDefaultModel(t)
	cfg.Model.Keys = filepath.Join(repoRoot(t), "models", "keys")
	a, err := openAnalyzer(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, side := range []int{1, 8, 31} {
		_, err := a.Analyze(context.Background(), pngBytes(t, side, side, 200), "crop")
		var bad *badImageError
		if !errors.As(err, &bad) || bad.Reason != "implausible" {
			t.Fatalf("%d px crop: %v, want refused as implausible", side, err)
		}
	}
	var crop bytes.Buffer
	if err := synth.Encode(&crop, synth.CellAt(7001, synth.Knobs{}, 1, 0).Image, synth.Knobs{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Analyze(context.Background(), crop.Bytes(), "crop"); err != nil {
		t.Fatalf("a real crop refused: %v", err)
	}
}

// TestInboxReportsStuckFiles: a file that never becomes stable (a writer
// that keeps appending) is not taken, but it does not wait unseen: after
// inbox.stuck_after it is logged once and counted, and the gauge shows how
// long it has waited.
func TestInboxReportsStuckFiles(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) {
		c.Inbox.StableFor = 2 * time.Second
		c.Inbox.RescanInterval = 100 * time.Millisecond
		c.Inbox.StuckAfter = 300 * time.Millisecond
	})
	path := filepath.Join(td.cfg.Inbox.Dir, "s-stuck", "growing.png")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	data := pngBytes(t, 40, 40, 9)
	stop := time.Now().Add(1500 * time.Millisecond)
	for i := 0; time.Now().Before(stop); i++ {
		if err := os.WriteFile(path, append(data, make([]byte, i)...), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	text := metricsText(t, td.url)
	if !strings.Contains(text, "scopewatch_inbox_stuck_total 1\n") {
		t.Fatalf("stuck counter not 1:\n%s", grepLines(text, "scopewatch_inbox_"))
	}
	var oldest float64
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, "scopewatch_inbox_oldest_seconds "); ok {
			oldest, _ = strconv.ParseFloat(v, 64)
		}
	}
	if oldest < 1 {
		t.Fatalf("oldest wait %v s, want above 1 s after 1.5 s of writing", oldest)
	}
	if n := strings.Count(td.logs.String(), "image waiting in the inbox"); n != 1 {
		t.Fatalf("%d stuck warnings, want 1:\n%s", n, td.logs.String())
	}
}
