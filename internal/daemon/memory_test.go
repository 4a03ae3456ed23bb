package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/synth"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// TestAcceptanceMemory measures the daemon's resident set (DESIGN.md §5:
// under 200 MB with the default model) while it segments and classifies
// 20 synthetic 1920x1080 fields (4 slides of 5, ~230 red cells each)
// dropped into the inbox, with the unit's malloc settings:
//
//	SCOPEWATCH_ACCEPTANCE=1 go test -count=1 -v -run TestAcceptanceMemory ./internal/daemon/
//
// It reports the peak (VmHWM, and the anonymous and file-backed parts at
// the sampled peak), the resident set a few seconds after the last slide
// (steady), and the mappings holding the most file-backed pages.
// SCOPEWATCH_RSS_BUDGET_MB changes the limit checked (default 200).
func TestAcceptanceMemory(t *testing.T) {
	requireAcceptance(t)
	budget := 200.0
	if v := os.Getenv("SCOPEWATCH_RSS_BUDGET_MB"); v != "" {
		b, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("SCOPEWATCH_RSS_BUDGET_MB: %v", err)
		}
		budget = b
	}
	const fields, perSlide, seed = 20, 5, 9400
	staging := t.TempDir()
	sum, err := synth.WriteFields(context.Background(), synth.FieldsConfig{Dir: staging, N: fields, Seed: seed, FieldsPerSlide: perSlide})
	if err != nil {
		t.Fatal(err)
	}

	port, _ := testutil.FreePort()
	state := t.TempDir()
	// The example configuration's model settings, MQTT off (the broker's
	// client is a few hundred kB and not what is measured here).
	cfg := fmt.Sprintf(`state_dir: %s
log:
  level: info
model:
  path: %s
  keys: "%s"
  threads: 2
  batch: 8
  threshold: 0.5
images:
  workers: 1
inbox:
  rescan_interval: 1s
  stable_for: 300ms
slides:
  idle_timeout: 0s
http:
  listen: 127.0.0.1:%d
mqtt:
  enabled: false
`, state, requireDefaultModel(t), os.Getenv("SCOPEWATCH_TEST_KEYS"), port)
	p := startServe(t, state, cfg, port)
	pid := p.cmd.Process.Pid
	// Ready comes before drift finishes loading its baseline; let the
	// start settle so that "idle" means idle.
	time.Sleep(3 * time.Second)
	idle := readMemory(pid)

	mon := monitorMemory(pid, 50*time.Millisecond)
	inbox := filepath.Join(state, "inbox")
	slides, err := os.ReadDir(staging)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, s := range slides {
		// Copy into the state file system, then rename: the inbox sees
		// whole slide folders only.
		tmp := filepath.Join(state, "staging-"+s.Name())
		if err := os.MkdirAll(tmp, 0o755); err != nil {
			t.Fatal(err)
		}
		imgs, _ := filepath.Glob(filepath.Join(staging, s.Name(), "*.png"))
		for _, img := range imgs {
			b, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(tmp, filepath.Base(img)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Rename(tmp, filepath.Join(inbox, s.Name())); err != nil {
			t.Fatal(err)
		}
		writeAtomically(t, filepath.Join(inbox, s.Name(), ".done"), nil)
	}
	db := openDB(t, p.dbPath())
	testutil.Eventually(t, 10*time.Minute, func() bool {
		var n int
		db.QueryRow(`SELECT COUNT(*) FROM slides WHERE state = 'complete'`).Scan(&n)
		return n == len(slides)
	}, "all slides complete")
	elapsed := time.Since(start)
	time.Sleep(3 * time.Second)
	peak := mon.Stop()
	steady := readMemory(pid)

	var cells int
	if err := db.QueryRow(`SELECT COALESCE(SUM(cells), 0) FROM slides`).Scan(&cells); err != nil {
		t.Fatal(err)
	}
	// The synthetic truth counts border cells the segmentation drops by
	// design; far fewer cells means fields were not analysed at all.
	if cells < sum.RBC/2 {
		t.Fatalf("daemon counted %d red cells in %d fields, truth has %d", cells, fields, sum.RBC)
	}
	mb := func(kb int64) float64 { return float64(kb) / 1024 }
	out, _ := json.Marshal(map[string]any{
		"fields": fields, "cells": cells, "seconds": elapsed.Seconds(),
		"idle_rss_mb": mb(idle.RSS), "idle_anon_mb": mb(idle.Anon), "idle_file_mb": mb(idle.File),
		"vmhwm_mb": mb(steady.HWM), "peak_sampled_rss_mb": mb(peak.RSS), "peak_anon_mb": mb(peak.Anon), "peak_file_mb": mb(peak.File),
		"max_anon_mb": mb(mon.maxAnon), "max_file_mb": mb(mon.maxFile),
		"steady_rss_mb": mb(steady.RSS), "steady_anon_mb": mb(steady.Anon), "steady_file_mb": mb(steady.File),
	})
	t.Logf("memory: %s", out)
	t.Logf("file-backed resident set by mapping (kB):\n%s", topFileMappings(pid, 12))
	if mb(steady.HWM) > budget {
		t.Errorf("peak resident set (VmHWM) %.1f MB > %.0f MB", mb(steady.HWM), budget)
	}
}

// procMemory is one reading of /proc/PID/status, in kB.
type procMemory struct {
	HWM, RSS, Anon, File int64
}

func readMemory(pid int) procMemory {
	var m procMemory
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fs[0], 10, 64)
		switch k {
		case "VmHWM":
			m.HWM = n
		case "VmRSS":
			m.RSS = n
		case "RssAnon":
			m.Anon = n
		case "RssFile":
			m.File = n + m.File
		case "RssShmem":
			m.File += n
		}
	}
	return m
}

// memoryMonitor keeps the reading with the largest RSS, and the largest
// anonymous and file-backed parts seen at any time.
type memoryMonitor struct {
	mu               sync.Mutex
	peak             procMemory
	maxAnon, maxFile int64
	stop, done       chan struct{}
}

func monitorMemory(pid int, every time.Duration) *memoryMonitor {
	m := &memoryMonitor{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			r := readMemory(pid)
			m.mu.Lock()
			if r.RSS > m.peak.RSS {
				m.peak = r
			}
			m.maxAnon = max(m.maxAnon, r.Anon)
			m.maxFile = max(m.maxFile, r.File)
			m.mu.Unlock()
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

func (m *memoryMonitor) Stop() procMemory {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.peak
}

// topFileMappings sums Rss per mapped file from /proc/PID/smaps (anonymous
// pages of a file's private mappings, relocated data, count as the file's
// too) and lists the n largest, with the total over all files.
func topFileMappings(pid, n int) string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	rss := map[string]int64{}
	var name string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fs := strings.Fields(line)
		if len(fs) >= 5 && strings.Contains(fs[0], "-") && !strings.HasSuffix(fs[0], ":") {
			name = ""
			if len(fs) >= 6 && strings.HasPrefix(fs[5], "/") {
				name = fs[5]
			}
			continue
		}
		if name != "" && len(fs) >= 2 && fs[0] == "Rss:" {
			v, _ := strconv.ParseInt(fs[1], 10, 64)
			rss[name] += v
		}
	}
	names := make([]string, 0, len(rss))
	var total int64
	for k, v := range rss {
		names = append(names, k)
		total += v
	}
	sort.Slice(names, func(i, j int) bool { return rss[names[i]] > rss[names[j]] })
	var b strings.Builder
	for i, k := range names {
		if i == n {
			break
		}
		fmt.Fprintf(&b, "%8d %s\n", rss[k], k)
	}
	fmt.Fprintf(&b, "%8d total over %d files", total, len(names))
	return b.String()
}

// TestLargestFieldMemory: the largest field the default configuration
// accepts (images.max_pixels, as a square) keeps the daemon's peak
// resident set under 250 MB when it is counted: a blank field, and a
// dense synthetic smear (magnification 0.7, ~2x the cells of a nominal
// field, tiled to the full size). A field of sensor noise, refused as
// implausible after segmentation, stays under 300 MB, inside the unit's
// MemoryMax=400M. SCOPEWATCH_FIELD_PIXELS measures another size.
func TestLargestFieldMemory(t *testing.T) {
	requireDefaultModel(t)
	const budgetMB = 250.0
	pixels := config.Default().Images.MaxPixels
	if v := os.Getenv("SCOPEWATCH_FIELD_PIXELS"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("SCOPEWATCH_FIELD_PIXELS: %v", err)
		}
		pixels = n
	}
	side := int(math.Sqrt(float64(pixels)))
	smear := func() []byte {
		src, _, _ := synth.FieldAt(9500, synth.Knobs{Magnification: 0.7}, 1, 0)
		dst := image.NewRGBA(image.Rect(0, 0, side, side))
		sb := src.Bounds()
		for y := 0; y < side; y++ {
			for x := 0; x < side; x++ {
				dst.Set(x, y, src.At(sb.Min.X+x%sb.Dx(), sb.Min.Y+y%sb.Dy()))
			}
		}
		return encodePNG(t, dst)
	}
	for _, c := range []struct {
		name     string
		img      func() []byte
		budgetMB float64
		counted  bool
	}{
		{"black", func() []byte { return encodePNG(t, image.NewRGBA(image.Rect(0, 0, side, side))) }, budgetMB, true},
		{"smear", smear, budgetMB, true},
		{"noise", func() []byte { return testutil.NoisePNG(side, side, 7) }, 300, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			port, _ := testutil.FreePort()
			state := t.TempDir()
			cfg := fmt.Sprintf(`state_dir: %s
model:
  path: %s
  keys: "%s"
images:
  max_pixels: %d
inbox:
  rescan_interval: 500ms
  stable_for: 200ms
http:
  listen: 127.0.0.1:%d
mqtt:
  enabled: false
`, state, requireDefaultModel(t), os.Getenv("SCOPEWATCH_TEST_KEYS"), pixels, port)
			p := startServe(t, state, cfg, port)
			pid := p.cmd.Process.Pid
			time.Sleep(2 * time.Second)
			idle := readMemory(pid)
			data := c.img()
			slide := filepath.Join(state, "inbox", "s-big")
			tmp := filepath.Join(state, "staging")
			os.MkdirAll(tmp, 0o755)
			if err := os.WriteFile(filepath.Join(tmp, "field.png"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), []byte(`{"kind":"field"}`), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, slide); err != nil {
				t.Fatal(err)
			}
			db := openDB(t, p.dbPath())
			// Counted or refused (noise is an implausible field): either way
			// the file was decoded and segmented.
			var stored, refused int
			testutil.Eventually(t, 3*time.Minute, func() bool {
				db.QueryRow(`SELECT COALESCE(SUM(images), 0), COALESCE(SUM(refused), 0) FROM slides`).Scan(&stored, &refused)
				return stored+refused == 1
			}, "the field was neither processed nor refused: %s", p.logs.String())
			time.Sleep(time.Second)
			m := readMemory(pid)
			outcome := map[bool]string{true: "counted", false: "refused"}[stored == 1]
			t.Logf("%dx%d %s field (%d kB PNG, %s): idle RSS %.1f MB, peak (VmHWM) %.1f MB", side, side, c.name, len(data)/1024, outcome, float64(idle.RSS)/1024, float64(m.HWM)/1024)
			if (stored == 1) != c.counted {
				t.Errorf("the %s field was %s", c.name, outcome)
			}
			if float64(m.HWM)/1024 > c.budgetMB {
				t.Errorf("peak resident set %.1f MB > %.0f MB for a %d-pixel %s field", float64(m.HWM)/1024, c.budgetMB, side*side, c.name)
			}
		})
	}
}
