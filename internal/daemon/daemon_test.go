package daemon

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"gopkg.in/yaml.v3"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"math"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/store/storetest"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// pixelAnalyzer is a deterministic stand-in for the model in the daemon's
// own unit tests (the end-to-end tests use the real one): a crop is one
// cell whose p(parasitized) is its top-left pixel's red value / 255; a
// "field" is a grid of 10x10 tiles, one cell per non-black tile. It decodes
// with the standard library, so bad bytes are refused as the real decoder
// would refuse them.
type pixelAnalyzer struct {
	mu        sync.Mutex
	threshold float64
}

func (a *pixelAnalyzer) Analyze(_ context.Context, data []byte, kind string) (analysis, error) {
	if len(data) == 0 {
		return analysis{}, &badImageError{Reason: "empty", Err: errors.New("empty file")}
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return analysis{}, &badImageError{Reason: "corrupt", Err: fmt.Errorf("corrupt image: %v", err)}
	}
	a.mu.Lock()
	thr := a.threshold
	a.mu.Unlock()
	if thr == 0 {
		thr = 0.5
	}
	b := img.Bounds()
	cell := func(r image.Rectangle) cellResult {
		red, _, _, _ := img.At(r.Min.X, r.Min.Y).RGBA()
		p := float64(red>>8) / 255
		lab := "uninfected"
		if p >= thr {
			lab = "parasitized"
		}
		return cellResult{Box: r, P: p, Label: lab, Parasitized: p >= thr}
	}
	if kind == "auto" {
		kind = "crop"
		if b.Dx() >= 400 && b.Dy() >= 400 {
			kind = "field"
		}
	}
	an := analysis{Kind: kind, Width: b.Dx(), Height: b.Dy()}
	if kind == "crop" {
		an.Cells = []cellResult{cell(b)}
		return an, nil
	}
	for y := 0; y+10 <= b.Dy(); y += 10 {
		for x := 0; x+10 <= b.Dx(); x += 10 {
			r := image.Rect(x, y, x+10, y+10)
			if _, _, _, al := img.At(x, y).RGBA(); al == 0 {
				continue
			}
			an.Cells = append(an.Cells, cell(r))
		}
	}
	return an, nil
}
func (a *pixelAnalyzer) ModelVersion() string { return "test-1" }
func (a *pixelAnalyzer) SetThreshold(t float64) {
	a.mu.Lock()
	a.threshold = t
	a.mu.Unlock()
}
func (a *pixelAnalyzer) Close() error { return nil }

var _ analyzer = (*pixelAnalyzer)(nil)

func pngBytes(t testing.TB, w, h int, red uint8) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			img.Set(x, y, color.NRGBA{R: red, G: 10, B: 10, A: 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type testDaemon struct {
	d      *Daemon
	cfg    config.Config
	url    string
	cancel context.CancelFunc
	done   chan error
	logs   *bytes.Buffer
}

func startTestDaemon(t *testing.T, mutate func(*config.Config)) *testDaemon {
	t.Helper()
	return startTestDaemonWith(t, t.TempDir(), &pixelAnalyzer{}, mutate)
}

// runTestDaemon runs d until its test stops it, once its HTTP server
// listens.
func runTestDaemon(t *testing.T, d *Daemon, cfg config.Config, logs *bytes.Buffer) *testDaemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	td := &testDaemon{d: d, cfg: cfg, cancel: cancel, done: make(chan error, 1), logs: logs}
	go func() { td.done <- d.Run(ctx) }()
	select {
	case addr := <-d.httpAddr:
		td.url = "http://" + addr
	case err := <-td.done:
		t.Fatalf("daemon stopped at start: %v", err)
	}
	return td
}

// startTestDaemonWith runs a daemon on state directory dir (reused to
// test restarts) with the given model.
func startTestDaemonWith(t *testing.T, dir string, model analyzer, mutate func(*config.Config)) *testDaemon {
	t.Helper()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.HTTP.Listen = "127.0.0.1:0"
	// A broker that refuses connections: results and alerts are queued
	// (the MQTT tests start a real one).
	cfg.MQTT.Broker = "tcp://127.0.0.1:1"
	cfg.MQTT.MaxBackoff = time.Second
	cfg.Inbox.StableFor = 100 * time.Millisecond
	cfg.Inbox.RescanInterval = 200 * time.Millisecond
	cfg.Log.Level = "debug"
	if mutate != nil {
		mutate(&cfg)
	}
	c, err := config.Decode(strings.NewReader(mustYAML(t, cfg)), nil)
	if err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	logs := &bytes.Buffer{}
	level := new(slog.LevelVar)
	level.Set(slog.LevelDebug)
	log := slog.New(slog.NewTextHandler(&syncWriter{w: logs}, &slog.HandlerOptions{Level: level}))
	d, err := newDaemon(context.Background(), c, daemonDeps{Log: log, Level: level, Model: model})
	if err != nil {
		t.Fatal(err)
	}
	td := runTestDaemon(t, d, c, logs)
	testutil.Eventually(t, 5*time.Second, func() bool { return d.ready.Load() }, "daemon ready")
	t.Cleanup(func() {
		td.stop(t)
		// Whatever the test did, the daemon must leave a sound database
		// (unless the test removed it on purpose).
		if _, err := os.Stat(td.cfg.Database); err == nil {
			storetest.Check(t, openDB(t, td.cfg.Database))
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
	})
	return td
}

func (td *testDaemon) stop(t *testing.T) {
	if td.cancel == nil {
		return
	}
	td.cancel()
	td.cancel = nil
	select {
	case err := <-td.done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not stop within 30 s")
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func mustYAML(t testing.TB, c config.Config) string {
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// openDB opens the daemon's database read-only, as a second process would.
func openDB(t testing.TB, path string) *sql.DB { return storetest.OpenReadOnly(t, path) }

func slideState(t *testing.T, td *testDaemon, slide string) (state string, cells, infected int, reason string) {
	var r sql.NullString
	err := td.d.db.db.QueryRow(`SELECT state, cells, infected, stopping_reason FROM slides WHERE slide = ?`, slide).Scan(&state, &cells, &infected, &r)
	if errors.Is(err, sql.ErrNoRows) {
		return "", 0, 0, ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return state, cells, infected, r.String
}

func writeAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".part")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestInboxSlideWithMarker(t *testing.T) {
	td := startTestDaemon(t, nil)
	in := td.cfg.Inbox.Dir
	// 3 parasitized (red 250) and 7 uninfected (red 20) crops.
	for i := 0; i < 10; i++ {
		red := uint8(20)
		if i < 3 {
			red = 250
		}
		writeAtomically(t, filepath.Join(in, "s1", fmt.Sprintf("c%02d.png", i)), pngBytes(t, 40, 40, red))
	}
	writeAtomically(t, filepath.Join(in, "s1", ".done"), nil)
	testutil.Eventually(t, 10*time.Second, func() bool { s, _, _, _ := slideState(t, td, "s1"); return s == "complete" }, "slide s1 complete")
	_, cells, infected, reason := slideState(t, td, "s1")
	if cells != 10 || infected != 3 || reason != "marker" {
		t.Fatalf("slide s1: cells %d infected %d reason %q; want 10, 3, marker", cells, infected, reason)
	}
	done, _ := filepath.Glob(filepath.Join(td.cfg.Inbox.DoneDir, "s1", "*.png"))
	if len(done) != 10 {
		t.Fatalf("%d files in done/s1, want 10", len(done))
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(in, "s1"))
		return os.IsNotExist(err)
	}, "slide folder cleared after completion")
	var n int
	td.d.db.db.QueryRow(`SELECT COUNT(*) FROM cell_predictions`).Scan(&n)
	if n != 10 {
		t.Fatalf("%d cell predictions stored, want 10", n)
	}
	var payload []byte
	if err := td.d.db.db.QueryRow(`SELECT payload FROM feedback_outbox WHERE id = 'result/' || (SELECT result_id FROM slides WHERE slide='s1')`).Scan(&payload); err != nil {
		t.Fatalf("result not queued: %v", err)
	}
	var s slideSummary
	json.Unmarshal(payload, &s)
	// Ten cells are counted, but a parasitemia of ten cells would be a
	// guess: the result says inconclusive, with the reason, and no number.
	if s.Cells != 10 || s.Infected != 3 || s.ModelVersion != "test-1" || s.Verdict != verdictInconclusive ||
		s.ParasitemiaPct != nil || s.CILowPct != nil || len(s.Reasons) != 1 || !strings.Contains(s.Reasons[0], "slides.min_cells") {
		t.Fatalf("bad summary %+v", s)
	}
}

func TestInboxQuarantinesBadImageAndGoesOn(t *testing.T) {
	td := startTestDaemon(t, nil)
	in := td.cfg.Inbox.Dir
	writeAtomically(t, filepath.Join(in, "s2", "bad.png"), []byte("this is not a png"))
	writeAtomically(t, filepath.Join(in, "s2", "empty.png"), nil)
	writeAtomically(t, filepath.Join(in, "s2", "good.png"), pngBytes(t, 40, 40, 20))
	writeAtomically(t, filepath.Join(in, "s2", "notes.txt"), []byte("ignored"))
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, cells, _, _ := slideState(t, td, "s2")
		_, e1 := os.Stat(filepath.Join(td.cfg.Inbox.QuarantineDir, "s2", "bad.png.reason"))
		_, e2 := os.Stat(filepath.Join(td.cfg.Inbox.QuarantineDir, "s2", "empty.png.reason"))
		return cells == 1 && e1 == nil && e2 == nil
	}, "good image counted, bad ones quarantined")
	reason, _ := os.ReadFile(filepath.Join(td.cfg.Inbox.QuarantineDir, "s2", "bad.png.reason"))
	if !strings.Contains(string(reason), "corrupt image") {
		t.Fatalf("reason file says %q", reason)
	}
	if _, err := os.Stat(filepath.Join(in, "s2", "notes.txt")); err != nil {
		t.Fatalf("non-image file should be left alone: %v", err)
	}
}

func TestInboxWaitsForGrowingFile(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) { c.Inbox.StableFor = 700 * time.Millisecond })
	p := filepath.Join(td.cfg.Inbox.Dir, "s3", "slow.png")
	data := pngBytes(t, 40, 40, 250)
	os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	// Write half, wait past a rescan, write the rest: a daemon that took
	// the file early would quarantine it as truncated.
	f.Write(data[:len(data)/2])
	time.Sleep(400 * time.Millisecond)
	f.Write(data[len(data)/2:])
	f.Close()
	testutil.Eventually(t, 10*time.Second, func() bool { _, cells, _, _ := slideState(t, td, "s3"); return cells == 1 }, "slow file processed")
	if q, _ := filepath.Glob(filepath.Join(td.cfg.Inbox.QuarantineDir, "s3", "*")); len(q) != 0 {
		t.Fatalf("growing file quarantined: %v", q)
	}
}

func TestTargetCellsAndIdleTimeout(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) {
		c.Slides.TargetCells = 5
		c.Slides.IdleTimeout = 1500 * time.Millisecond
	})
	for i := 0; i < 7; i++ {
		resp := upload(t, td.url+"/v1/images?slide=t1&name="+fmt.Sprintf("c%d.png", i), "image/png", pngBytes(t, 40, 40, 250))
		resp.Body.Close()
		if i < 5 && resp.StatusCode != 200 {
			t.Fatalf("upload %d: %d", i, resp.StatusCode)
		}
		if i >= 5 && resp.StatusCode != http.StatusConflict {
			t.Fatalf("upload %d after the target: %d, want 409", i, resp.StatusCode)
		}
	}
	if st, cells, _, reason := slideState(t, td, "t1"); st != "complete" || cells != 5 || reason != "target_cells" {
		t.Fatalf("t1: %s %d %s", st, cells, reason)
	}
	resp := upload(t, td.url+"/v1/images?slide=idle1", "image/png", pngBytes(t, 40, 40, 20))
	resp.Body.Close()
	testutil.Eventually(t, 10*time.Second, func() bool { st, _, _, r := slideState(t, td, "idle1"); return st == "complete" && r == "idle_timeout" }, "idle slide completed")
}

func upload(t *testing.T, url, ctype string, body []byte) *http.Response {
	t.Helper()
	resp, err := http.Post(url, ctype, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestHTTPUploads(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) { c.Images.MaxBytes = 64 << 10 })
	// Raw body.
	resp := upload(t, td.url+"/v1/images?slide=h1&name=a.png", "image/png", pngBytes(t, 40, 40, 250))
	var ur uploadResponse
	json.NewDecoder(resp.Body).Decode(&ur)
	resp.Body.Close()
	if resp.StatusCode != 200 || ur.Cells != 1 || ur.Infected != 1 || ur.Kind != "crop" || len(ur.Predictions) != 1 {
		t.Fatalf("raw upload: %d %+v", resp.StatusCode, ur)
	}
	// Multipart, completing the slide.
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("note", "x")
	fw, _ := mw.CreateFormFile("image", "b.png")
	fw.Write(pngBytes(t, 40, 40, 20))
	mw.Close()
	resp = upload(t, td.url+"/v1/images?slide=h1&complete=1", mw.FormDataContentType(), body.Bytes())
	ur = uploadResponse{}
	json.NewDecoder(resp.Body).Decode(&ur)
	resp.Body.Close()
	if resp.StatusCode != 200 || ur.Image != "b.png" || ur.Summary == nil || ur.Summary.Cells != 2 || ur.Summary.Infected != 1 || ur.Summary.StoppingReason != "request" {
		t.Fatalf("multipart upload: %d %+v", resp.StatusCode, ur)
	}
	// Errors.
	cases := []struct {
		name, url, ctype string
		body             []byte
		code             int
		reason           string
	}{
		{"oversize", "/v1/images?slide=h2", "image/png", bytes.Repeat([]byte{1}, 65<<10), 413, "too_large"},
		{"not an image", "/v1/images?slide=h2", "image/png", []byte("hello"), 422, "corrupt"},
		{"empty", "/v1/images?slide=h2", "image/png", nil, 400, "empty"},
		{"bad slide", "/v1/images?slide=../etc", "image/png", pngBytes(t, 40, 40, 1), 400, "bad_slide"},
		{"bad kind", "/v1/images?slide=h2&kind=blob", "image/png", pngBytes(t, 40, 40, 1), 400, "bad_kind"},
		{"multipart without boundary", "/v1/images?slide=h2", "multipart/form-data", []byte("--x\r\n"), 400, "bad_upload"},
		{"multipart without file", "/v1/images?slide=h2", "multipart/form-data; boundary=zz", []byte("--zz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--zz--\r\n"), 400, "bad_upload"},
		{"completed slide", "/v1/images?slide=h1&name=c.png", "image/png", pngBytes(t, 40, 40, 1), 409, "slide_complete"},
	}
	for _, tc := range cases {
		resp := upload(t, td.url+tc.url, tc.ctype, tc.body)
		var ae apiError
		json.NewDecoder(resp.Body).Decode(&ae)
		resp.Body.Close()
		if resp.StatusCode != tc.code || ae.Reason != tc.reason || ae.Error == "" {
			t.Errorf("%s: %d %+v, want %d %s", tc.name, resp.StatusCode, ae, tc.code, tc.reason)
		}
	}
	// Slide read-back and operations endpoints.
	r, _ := http.Get(td.url + "/v1/slides/h1")
	var s slideSummary
	json.NewDecoder(r.Body).Decode(&s)
	r.Body.Close()
	if s.State != "complete" || s.Cells != 2 {
		t.Fatalf("GET slide: %+v", s)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		r, _ := http.Get(td.url + p)
		r.Body.Close()
		if r.StatusCode != 200 {
			t.Errorf("%s: %d", p, r.StatusCode)
		}
	}
	r, _ = http.Get(td.url + "/metrics")
	m, _ := io.ReadAll(r.Body)
	r.Body.Close()
	for _, want := range []string{`scopewatch_images_total{outcome="ok",source="http"} 2`, `scopewatch_model_info{version="test-1"} 1`,
		`scopewatch_http_errors_total{reason="too_large"} 1`, "scopewatch_analyze_seconds_bucket", "scopewatch_queue_depth", "scopewatch_db_used_bytes"} {
		if !strings.Contains(string(m), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestReloadAppliesThresholdAndLevel(t *testing.T) {
	td := startTestDaemon(t, nil)
	next := td.cfg
	next.Model.Threshold = 0.9
	next.Log.Level = "warn"
	next.HTTP.Listen = "127.0.0.1:1" // needs a restart: reported, not applied
	td.d.Reload(next)
	if td.d.level.Level() != slog.LevelWarn {
		t.Fatalf("level %v", td.d.level.Level())
	}
	resp := upload(t, td.url+"/v1/images?slide=r1", "image/png", pngBytes(t, 40, 40, 200)) // p = 0.78
	var ur uploadResponse
	json.NewDecoder(resp.Body).Decode(&ur)
	resp.Body.Close()
	if ur.Infected != 0 {
		t.Fatalf("threshold 0.9 not applied: %+v", ur)
	}
	if td.d.config().HTTP.Listen == "127.0.0.1:1" {
		t.Fatal("non-reloadable field changed")
	}
}

func TestRestartKeepsSlidesAndBootSequence(t *testing.T) {
	dir := t.TempDir()
	mut := func(c *config.Config) { c.StateDir = dir }
	td := startTestDaemon(t, mut)
	resp := upload(t, td.url+"/v1/images?slide=k1&name=a.png", "image/png", pngBytes(t, 40, 40, 250))
	resp.Body.Close()
	boot1 := td.d.boot
	td.stop(t)
	td2 := startTestDaemon(t, mut)
	if td2.d.boot != boot1+1 {
		t.Fatalf("boot %d after %d", td2.d.boot, boot1)
	}
	resp = upload(t, td2.url+"/v1/images?slide=k1&name=a.png", "image/png", pngBytes(t, 40, 40, 250))
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("re-sent image: %d, want 409 duplicate", resp.StatusCode)
	}
	if _, cells, _, _ := slideState(t, td2, "k1"); cells != 1 {
		t.Fatalf("cells %d after duplicate", cells)
	}
}

func TestProportionCI(t *testing.T) {
	cases := []struct {
		k, n          int
		method        string
		wantLo, wantH float64
	}{
		// Reference values: R binom.test(k, n)$conf.int (Clopper-Pearson) and
		// the Wilson formula evaluated by hand.
		{10, 1000, "clopper-pearson", 0.004803, 0.018313},
		{0, 1000, "clopper-pearson", 0, 0.003682},
		{50, 100, "clopper-pearson", 0.398321, 0.601679},
		{10, 1000, "wilson", 0.005441, 0.018309},
		{0, 10, "wilson", 0, 0.277533},
		{10, 10, "wilson", 0.722467, 1},
	}
	for _, c := range cases {
		lo, hi := proportionCI(c.k, c.n, c.method)
		if math.Abs(lo-c.wantLo) > 2e-5 || math.Abs(hi-c.wantH) > 2e-5 {
			t.Errorf("%s %d/%d: [%.6f, %.6f], want [%.6f, %.6f]", c.method, c.k, c.n, lo, hi, c.wantLo, c.wantH)
		}
	}
}

type fakeFrames struct {
	t      *testing.T
	frames int
}

func (f *fakeFrames) Frame() ([]byte, error) {
	if f.frames == 0 {
		return nil, inference.ErrEndOfStream
	}
	f.frames--
	return pngBytes(f.t, 40, 40, 250), nil
}
func (f *fakeFrames) Live() bool   { return false }
func (f *fakeFrames) Close() error { return nil }

func TestCameraFramesAreCounted(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) {
		c.Camera.Source = "clip.avi"
		c.Camera.Interval = 50 * time.Millisecond
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opens := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		td.d.runCamera(ctx, func(string) (frameSource, error) {
			opens++
			if opens == 1 {
				return nil, errors.New("device busy") // reopened with backoff
			}
			return &fakeFrames{t: t, frames: 3}, nil
		})
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("camera loop did not end at the end of the video")
	}
	testutil.Eventually(t, 5*time.Second, func() bool { _, cells, _, _ := slideState(t, td, "camera"); return cells == 3 }, "3 frames counted")
}

func TestDiskCapAlertsAndSheds(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) {
		c.Storage.MaxDBBytes = 1 << 20
		c.Storage.CheckInterval = time.Hour // driven by hand below
	})
	field := pngBytes(t, 600, 600, 250) // 3600 cells per upload
	for i := 0; i < 6; i++ {
		resp := upload(t, fmt.Sprintf("%s/v1/images?slide=big&name=f%d.png&kind=field", td.url, i), "image/png", field)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("upload %d: %d", i, resp.StatusCode)
		}
	}
	td.d.storageCheck(context.Background())
	var alerts int
	td.d.db.db.QueryRow(`SELECT COUNT(*) FROM feedback_outbox WHERE id LIKE 'alert/%db_cap%'`).Scan(&alerts)
	if alerts != 1 {
		t.Fatalf("%d db_cap alerts queued, want 1", alerts)
	}
	var cells int
	td.d.db.db.QueryRow(`SELECT COUNT(*) FROM cell_predictions`).Scan(&cells)
	if cells >= 6*3600 {
		t.Fatalf("no predictions shed: %d", cells)
	}
	// The slide's counts are kept; the daemon keeps taking images.
	if _, n, _, _ := slideState(t, td, "big"); n != 6*3600 {
		t.Fatalf("slide count changed to %d", n)
	}
	resp := upload(t, td.url+"/v1/images?slide=after", "image/png", pngBytes(t, 40, 40, 1))
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("upload after the cap: %d", resp.StatusCode)
	}
	td.d.storageCheck(context.Background())
	td.d.db.db.QueryRow(`SELECT COUNT(*) FROM feedback_outbox WHERE id LIKE 'alert/%db_cap%'`).Scan(&alerts)
	if alerts != 1 {
		t.Fatalf("%d db_cap alerts after a check under the cap, want still 1", alerts)
	}
}

func TestSlideManifestKindAndDelete(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) { c.Inbox.AfterProcess = "delete" })
	dir := filepath.Join(td.cfg.Inbox.Dir, "mf")
	writeAtomically(t, filepath.Join(dir, "manifest.json"), []byte(`{"kind": "field"}`))
	writeAtomically(t, filepath.Join(dir, "small.png"), pngBytes(t, 40, 40, 250)) // a crop by size
	writeAtomically(t, filepath.Join(dir, ".done"), nil)
	testutil.Eventually(t, 10*time.Second, func() bool { s, _, _, _ := slideState(t, td, "mf"); return s == "complete" }, "slide complete")
	if _, cells, _, _ := slideState(t, td, "mf"); cells != 16 {
		t.Fatalf("%d cells: the manifest's kind=field was not applied (a 40x40 field holds 16 tiles)", cells)
	}
	if ents, _ := os.ReadDir(td.cfg.Inbox.DoneDir); len(ents) != 0 {
		t.Fatalf("after_process=delete moved files to done/: %v", ents)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { _, err := os.Stat(dir); return os.IsNotExist(err) }, "slide folder removed")
}

func TestRetentionPrunesOldRows(t *testing.T) {
	clock := testutil.NewClock(time.Now())
	dir := t.TempDir()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.MQTT.Enabled, cfg.HTTP.Enabled, cfg.Inbox.Enabled = false, false, false
	c, err := config.Decode(strings.NewReader(mustYAML(t, cfg)), nil)
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDaemon(context.Background(), c, daemonDeps{Log: slog.New(slog.DiscardHandler), Now: clock.Now, Model: &pixelAnalyzer{}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.db.Close()
	for i, slide := range []string{"old", "old", "new"} {
		if slide == "new" {
			clock.Add(c.Storage.Retention + time.Hour)
		}
		r := d.process(job{slide: slide, name: fmt.Sprintf("i%d.png", i), source: "test", data: pngBytes(t, 40, 40, 250), enqueued: clock.Now()})
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
	// "old" completes long ago; "new" is recent.
	if _, _, err := d.completeSlide(context.Background(), "old", "request"); err != nil {
		t.Fatal(err)
	}
	d.db.db.Exec(`UPDATE serve_outbox SET relayed_at = 1`)
	d.db.db.Exec(`UPDATE slides SET completed_at = 1 WHERE slide = 'old'`)
	d.storageCheck(context.Background())
	var cells, slides int
	d.db.db.QueryRow(`SELECT COUNT(*) FROM cell_predictions`).Scan(&cells)
	d.db.db.QueryRow(`SELECT COUNT(*) FROM slides`).Scan(&slides)
	if cells != 1 || slides != 1 {
		t.Fatalf("after retention: %d predictions, %d slides; want only the recent 1 and 1", cells, slides)
	}
}

type versionedAnalyzer struct {
	pixelAnalyzer
	version string
	closed  *int
}

func (v *versionedAnalyzer) ModelVersion() string { return v.version }
func (v *versionedAnalyzer) Close() error         { *v.closed++; return nil }

func TestReloadSwapsOrRejectsModel(t *testing.T) {
	closed := 0
	var openErr error
	version := "v2"
	td := startTestDaemon(t, nil)
	td.d.open = func(config.Config, *slog.Logger) (analyzer, error) {
		if openErr != nil {
			return nil, openErr
		}
		return &versionedAnalyzer{version: version, closed: &closed}, nil
	}
	td.d.Reload(td.cfg)
	if got := td.d.model.ModelVersion(); got != "v2" {
		t.Fatalf("model %s after reload, want v2", got)
	}
	td.d.Reload(td.cfg) // same bundle: no swap, the fresh load is closed
	if closed != 1 || td.d.model.ModelVersion() != "v2" {
		t.Fatalf("same bundle: closed %d, model %s", closed, td.d.model.ModelVersion())
	}
	openErr = errors.New("bundle /x: bundle file sha256 mismatch: backbone.onnx")
	td.d.Reload(td.cfg)
	if td.d.model.ModelVersion() != "v2" {
		t.Fatal("a rejected bundle replaced the running model")
	}
	var alerts int
	td.d.db.db.QueryRow(`SELECT COUNT(*) FROM feedback_outbox WHERE id LIKE 'alert/%model_rejected%'`).Scan(&alerts)
	if alerts != 1 {
		t.Fatalf("%d model_rejected alerts, want 1", alerts)
	}
	resp := upload(t, td.url+"/v1/images?slide=sw1", "image/png", pngBytes(t, 40, 40, 250))
	var ur uploadResponse
	json.NewDecoder(resp.Body).Decode(&ur)
	resp.Body.Close()
	if ur.ModelVersion != "v2" {
		t.Fatalf("upload answered by model %s", ur.ModelVersion)
	}
}

// TestHTTPToken: with http.token set, /v1/ answers 401 without the bearer
// token or with a wrong one and works with it; health and metrics stay
// open; a token rotated by SIGHUP replaces the old one.
func TestHTTPToken(t *testing.T) {
	const token = "0123456789abcdef0123"
	td := startTestDaemon(t, func(c *config.Config) { c.HTTP.Token = token })
	do := func(method, path, auth string, body []byte) int {
		t.Helper()
		req, err := http.NewRequest(method, td.url+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", method, path)
		}
		return resp.StatusCode
	}
	img := pngBytes(t, 40, 40, 250)
	cases := []struct {
		method, path, auth string
		body               []byte
		want               int
	}{
		{"POST", "/v1/images?slide=t1", "", img, http.StatusUnauthorized},
		{"POST", "/v1/images?slide=t1", "Bearer wrong-token-wrong-token", img, http.StatusUnauthorized},
		{"POST", "/v1/images?slide=t1", token, img, http.StatusUnauthorized}, // no "Bearer "
		{"GET", "/v1/drift", "", nil, http.StatusUnauthorized},
		{"POST", "/v1/drift/ack", "", nil, http.StatusUnauthorized},
		{"GET", "/v1/slides/t1", "", nil, http.StatusUnauthorized},
		{"POST", "/v1/images?slide=t1", "Bearer " + token, img, http.StatusOK},
		{"GET", "/v1/slides/t1", "Bearer " + token, nil, http.StatusOK},
		{"GET", "/healthz", "", nil, http.StatusOK},
		{"GET", "/metrics", "", nil, http.StatusOK},
	}
	for _, c := range cases {
		if got := do(c.method, c.path, c.auth, c.body); got != c.want {
			t.Errorf("%s %s (auth %q): %d, want %d", c.method, c.path, c.auth, got, c.want)
		}
	}
	next := td.cfg
	next.HTTP.Token = "fedcba9876543210fedc"
	td.d.Reload(next)
	if got := do("GET", "/v1/slides/t1", "Bearer "+token, nil); got != http.StatusUnauthorized {
		t.Errorf("old token after rotation: %d, want 401", got)
	}
	if got := do("GET", "/v1/slides/t1", "Bearer "+next.HTTP.Token, nil); got != http.StatusOK {
		t.Errorf("new token after rotation: %d, want 200", got)
	}
}

func TestSlideVerdict(t *testing.T) {
	cfg := config.Default().Slides
	for _, c := range []struct {
		name    string
		row     slideRow
		verdict string
		mention string
	}{
		{"enough cells", slideRow{Images: 3, Fields: 3, Cells: 700, Infected: 7}, verdictOK, ""},
		{"too few cells", slideRow{Images: 1, Fields: 1, Cells: 499}, verdictInconclusive, "at least 500"},
		{"mostly refused images", slideRow{Images: 8, Refused: 2, Cells: 800}, verdictInconclusive, "2 of 10 images were refused"},
		{"one refused in twenty", slideRow{Images: 19, Refused: 1, Cells: 800}, verdictOK, ""},
		{"sparse fields", slideRow{Images: 5, Fields: 5, SparseFields: 1, Cells: 900}, verdictInconclusive, "1 of 5 fields had fewer than 20"},
		{"drift episode open", slideRow{Images: 3, Fields: 3, Cells: 700, Flagged: "a drift alarm (scores_cvm)"}, verdictFlagged, "scores_cvm"},
		// What cannot be judged is not made flagged: inconclusive wins.
		{"inconclusive and flagged", slideRow{Images: 1, Cells: 3, Flagged: "a drift alarm (scores_cvm)"}, verdictInconclusive, "min_cells"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, reasons := slideVerdict(c.row, cfg)
			if v != c.verdict || (c.mention != "" && !strings.Contains(strings.Join(reasons, "; "), c.mention)) || (v == verdictOK) != (len(reasons) == 0) {
				t.Fatalf("verdict %s, reasons %q; want %s mentioning %q", v, reasons, c.verdict, c.mention)
			}
		})
	}
}

// TestSlideResultWithParasitemia: a slide with enough cells gets its
// parasitemia and interval; a refused image of the slide is counted in
// its result.
func TestSlideResultWithParasitemia(t *testing.T) {
	td := startTestDaemon(t, func(c *config.Config) { c.Slides.MinCells = 10 })
	in := td.cfg.Inbox.Dir
	for i := 0; i < 10; i++ {
		writeAtomically(t, filepath.Join(in, "s1", fmt.Sprintf("c%02d.png", i)), pngBytes(t, 40, 40, uint8(i)))
	}
	writeAtomically(t, filepath.Join(in, "s1", "junk.png"), []byte("not an image"))
	testutil.Eventually(t, 10*time.Second, func() bool {
		var n, r int
		td.d.db.db.QueryRow(`SELECT images, refused FROM slides WHERE slide='s1'`).Scan(&n, &r)
		return n == 10 && r == 1
	}, "ten images stored and one refused")
	writeAtomically(t, filepath.Join(in, "s1", ".done"), nil)
	testutil.Eventually(t, 10*time.Second, func() bool { s, _, _, _ := slideState(t, td, "s1"); return s == "complete" }, "slide s1 complete")
	var payload []byte
	if err := td.d.db.db.QueryRow(`SELECT payload FROM feedback_outbox WHERE id = 'result/' || (SELECT result_id FROM slides WHERE slide='s1')`).Scan(&payload); err != nil {
		t.Fatalf("result not queued: %v", err)
	}
	var s slideSummary
	if err := json.Unmarshal(payload, &s); err != nil {
		t.Fatal(err)
	}
	want := 100 * float64(s.Infected) / 10
	if s.Verdict != verdictOK || s.Refused != 1 || s.ParasitemiaPct == nil || math.Abs(*s.ParasitemiaPct-want) > 1e-9 || !(*s.CILowPct <= want && *s.CIHighPct >= want) {
		t.Fatalf("summary %+v", s)
	}
}
