package daemon

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/internal/synth"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// repoRoot is the module root (the binary runs there so that it finds the
// fetched ONNX Runtime and models/keys as an operator's checkout would).
func repoRoot(t testing.TB) string {
	p, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// requireDefaultModel returns the shipped bundle, or the one named by
// SCOPEWATCH_TEST_MODEL (with its keys in SCOPEWATCH_TEST_KEYS) to run these
// tests against another model.
func requireDefaultModel(t testing.TB) string {
	p := filepath.Join(repoRoot(t), "models", "default")
	if env := os.Getenv("SCOPEWATCH_TEST_MODEL"); env != "" {
		p = env
	}
	if _, err := os.Stat(filepath.Join(p, "manifest.json")); err != nil {
		t.Fatalf("the default model bundle is missing (%v): the end-to-end tests run the shipped model", err)
	}
	return p
}

// serveProc is the real binary running `serve`.
type serveProc struct {
	t        testing.TB
	cmd      *exec.Cmd
	url      string
	stateDir string
	cfgPath  string
	logs     *syncBuffer
	exited   chan struct{}
	notes    *notifyListener
	exitErr  error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// notifyListener plays systemd's side of sd_notify.
type notifyListener struct {
	conn *net.UnixConn
	path string
	mu   sync.Mutex
	msgs []string
}

func newNotifyListener(t testing.TB) *notifyListener {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifyListener{conn: conn, path: p}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, strings.Split(string(buf[:k]), "\n")...)
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return n
}

func (n *notifyListener) has(msg string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.msgs {
		if m == msg {
			return true
		}
	}
	return false
}

// e2eConfig is the YAML the tests start the daemon with.
func e2eConfig(t testing.TB, stateDir, broker string, port int, extra string) string {
	return fmt.Sprintf(`site: lab
device: e2e
state_dir: %s
log:
  level: debug
  format: json
model:
  path: %s
  keys: "%s"
  threads: 2
inbox:
  rescan_interval: 1s
  stable_for: 300ms
http:
  listen: 127.0.0.1:%d
mqtt:
  broker: %s
  max_backoff: 1s
shutdown:
  timeout: 20s
%s`, stateDir, requireDefaultModel(t), os.Getenv("SCOPEWATCH_TEST_KEYS"), port, broker, extra)
}

func startServe(t testing.TB, stateDir, cfgYAML string, port int) *serveProc {
	t.Helper()
	bin := scopewatchBinary(t.(*testing.T))
	cfgPath := filepath.Join(stateDir, "scopewatch.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfgYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &serveProc{t: t, stateDir: stateDir, cfgPath: cfgPath, logs: &syncBuffer{}, exited: make(chan struct{}),
		url: fmt.Sprintf("http://127.0.0.1:%d", port), notes: newNotifyListener(t)}
	p.cmd = exec.Command(bin, "serve", "--config", cfgPath)
	p.cmd.Dir = repoRoot(t)
	// The malloc settings of systemd/scopewatch.service, unless the test
	// measures what the binary applies itself (SCOPEWATCH_TEST_NO_MALLOC_ENV).
	p.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+p.notes.path, "WATCHDOG_USEC=2000000")
	if os.Getenv("SCOPEWATCH_TEST_NO_MALLOC_ENV") == "" {
		p.cmd.Env = append(p.cmd.Env, "MALLOC_ARENA_MAX=2", "MALLOC_MMAP_THRESHOLD_=131072")
	}
	p.cmd.Stderr = p.logs
	p.cmd.Stdout = p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exitErr = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("daemon log (tail):\n%s", tailLines(p.logs.String(), 60))
		}
	})
	ok := testutil.WaitFor(60*time.Second, func() bool {
		select {
		case <-p.exited:
			return true
		default:
		}
		r, err := http.Get(p.url + "/readyz")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	})
	select {
	case <-p.exited:
		t.Fatalf("daemon exited at start: %v\n%s", p.exitErr, p.logs.String())
	default:
	}
	if !ok {
		t.Fatalf("daemon not ready within 60 s:\n%s", p.logs.String())
	}
	return p
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// term sends SIGTERM and waits; it returns how long the exit took.
func (p *serveProc) term(bound time.Duration) (time.Duration, error) {
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return time.Since(start), p.exitErr
	case <-time.After(bound):
		p.cmd.Process.Kill()
		<-p.exited
		return time.Since(start), fmt.Errorf("not stopped within %s", bound)
	}
}

func (p *serveProc) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Kill()
	<-p.exited
}

func (p *serveProc) dbPath() string { return filepath.Join(p.stateDir, "scopewatch.db") }

// writeCrops writes crops [from, from+n) of a synthetic run into dir,
// renamed into place, and returns how many are parasitized.
func writeCrops(t testing.TB, dir string, seed int64, from, n int) (parasitized int) {
	for i := from; i < from+n; i++ {
		s := synth.CellAt(seed, synth.Knobs{}, n, i)
		var buf bytes.Buffer
		if err := synth.Encode(&buf, s.Image, synth.Knobs{}); err != nil {
			t.Fatal(err)
		}
		writeAtomically(t.(*testing.T), filepath.Join(dir, s.Name+".png"), buf.Bytes())
		if s.Label == synth.Parasitized {
			parasitized++
		}
	}
	return parasitized
}

func encodePNG(t testing.TB, img image.Image) []byte {
	var buf bytes.Buffer
	if err := synth.Encode(&buf, img, synth.Knobs{}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestServeEndToEnd runs the real binary against a real mosquitto: crops
// and fields through the inbox, uploads over HTTP, bad input, results in
// SQLite and on MQTT, sd_notify, SIGTERM.
func TestServeEndToEnd(t *testing.T) {
	requireDefaultModel(t)
	b := testutil.StartMosquitto(t)
	sub := newSubscriber(t, b.URL(), "e2e-sub", "scopewatch/v1/lab/e2e/#")
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	p := startServe(t, state, e2eConfig(t, state, b.URL(), port, ""), port)
	testutil.Eventually(t, 10*time.Second, func() bool { return p.notes.has("READY=1") }, "sd_notify READY=1")
	testutil.Eventually(t, 10*time.Second, func() bool { return p.notes.has("WATCHDOG=1") }, "sd_notify WATCHDOG=1")

	inbox := filepath.Join(state, "inbox")
	// Slide A: 40 crops through the inbox, completed by the marker.
	writeCrops(t, filepath.Join(inbox, "slide-a"), 8101, 0, 40)
	writeAtomically(t, filepath.Join(inbox, "slide-a", ".done"), nil)
	// Slide F: two whole fields through the inbox.
	fieldTruth := 0
	for i := 0; i < 2; i++ {
		img, truth, _ := synth.FieldAt(8102, synth.Knobs{}, 2, i)
		fieldTruth += truth.RBC
		writeAtomically(t, filepath.Join(inbox, "slide-f", truth.Field+".png"), encodePNG(t, img))
	}
	writeAtomically(t, filepath.Join(inbox, "slide-f", ".done"), nil)
	// A bad image beside good ones.
	writeAtomically(t, filepath.Join(inbox, "slide-b", "truncated.png"), encodePNG(t, synth.CellAt(8103, synth.Knobs{}, 1, 0).Image)[:300])
	writeCrops(t, filepath.Join(inbox, "slide-b"), 8103, 1, 3)
	writeAtomically(t, filepath.Join(inbox, "slide-b", ".done"), nil)

	// Slide H: 5 crops over HTTP (raw), then a field as multipart, completing it.
	for i := 0; i < 5; i++ {
		s := synth.CellAt(8104, synth.Knobs{}, 5, i)
		resp := upload(t, fmt.Sprintf("%s/v1/images?slide=slide-h&name=%s.png", p.url, s.Name), "image/png", encodePNG(t, s.Image))
		var ur uploadResponse
		json.NewDecoder(resp.Body).Decode(&ur)
		resp.Body.Close()
		if resp.StatusCode != 200 || ur.Kind != "crop" || ur.Cells != 1 || ur.Predictions[0].P < 0 || ur.Predictions[0].P > 1 || ur.ModelVersion == "" {
			t.Fatalf("crop upload %d: %d %+v", i, resp.StatusCode, ur)
		}
	}
	img, truth, _ := synth.FieldAt(8105, synth.Knobs{}, 1, 0)
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("image", "field.png")
	fw.Write(encodePNG(t, img))
	mw.Close()
	resp := upload(t, p.url+"/v1/images?slide=slide-h&complete=1", mw.FormDataContentType(), body.Bytes())
	var ur uploadResponse
	json.NewDecoder(resp.Body).Decode(&ur)
	resp.Body.Close()
	if resp.StatusCode != 200 || ur.Kind != "field" || ur.Summary == nil {
		t.Fatalf("field upload: %d %+v", resp.StatusCode, ur)
	}
	if ur.Cells < truth.RBC*8/10 || ur.Cells > truth.RBC*12/10+truth.WBC {
		t.Errorf("field upload found %d cells; truth has %d red cells", ur.Cells, truth.RBC)
	}
	// Bad uploads.
	for _, c := range []struct {
		name  string
		body  []byte
		ctype string
		code  int
	}{
		{"oversize", bytes.Repeat([]byte{0x89}, 65<<20), "image/png", 413},
		{"malformed", []byte("GIF89a not really"), "image/png", 422},
		{"truncated png", encodePNG(t, synth.CellAt(1, synth.Knobs{}, 1, 0).Image)[:200], "image/png", 422},
		{"malformed multipart", []byte("--zz\r\nbroken"), "multipart/form-data; boundary=zz", 400},
	} {
		resp := upload(t, p.url+"/v1/images?slide=slide-x", c.ctype, c.body)
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !bytes.Contains(msg, []byte(`"error"`)) {
			t.Errorf("%s: %d %s, want %d with a reason", c.name, resp.StatusCode, msg, c.code)
		}
	}

	// Results on MQTT (real subscriber) and in SQLite.
	resultTopic := "scopewatch/v1/lab/e2e/result"
	testutil.Eventually(t, 90*time.Second, func() bool { _, ids := sub.resultIDs(t, resultTopic); return len(ids) == 4 }, "4 slide results on MQTT")
	_, ids := sub.resultIDs(t, resultTopic)
	bySlide := map[string]slideSummary{}
	for _, r := range ids {
		bySlide[r.Slide] = r
	}
	db := openDB(t, p.dbPath())
	for slide, want := range map[string]int{"slide-a": 40, "slide-b": 3} {
		r := bySlide[slide]
		if r.Cells != want || r.StoppingReason != "marker" {
			t.Errorf("%s result: %+v, want %d cells by marker", slide, r, want)
		}
	}
	if r := bySlide["slide-f"]; r.Cells < fieldTruth*8/10 || r.Images != 2 {
		t.Errorf("slide-f result %+v; truth %d red cells", r, fieldTruth)
	}
	if r := bySlide["slide-h"]; r.Images != 6 || r.StoppingReason != "request" {
		t.Errorf("slide-h result %+v", r)
	}
	for slide, r := range bySlide {
		var cells, infected int
		if err := db.QueryRow(`SELECT cells, infected FROM slides WHERE slide = ? AND state = 'complete'`, slide).Scan(&cells, &infected); err != nil {
			t.Fatalf("slide %s in SQLite: %v", slide, err)
		}
		var stored int
		db.QueryRow(`SELECT COUNT(*) FROM cell_predictions c JOIN slides s ON s.id = c.slide_id WHERE s.slide = ?`, slide).Scan(&stored)
		if cells != r.Cells || infected != r.Infected || stored != cells {
			t.Errorf("slide %s: SQLite %d/%d (%d predictions), MQTT %d/%d", slide, infected, cells, stored, r.Infected, r.Cells)
		}
		switch {
		case r.Verdict == verdictInconclusive:
			if r.ParasitemiaPct != nil || len(r.Reasons) == 0 {
				t.Errorf("slide %s: inconclusive with parasitemia %v, reasons %v", slide, r.ParasitemiaPct, r.Reasons)
			}
		case r.ParasitemiaPct == nil || *r.CILowPct > *r.ParasitemiaPct || *r.CIHighPct < *r.ParasitemiaPct:
			t.Errorf("slide %s: verdict %s with parasitemia %v in [%v, %v]", slide, r.Verdict, r.ParasitemiaPct, r.CILowPct, r.CIHighPct)
		}
	}
	reason, err := os.ReadFile(filepath.Join(state, "quarantine", "slide-b", "truncated.png.reason"))
	if err != nil || !strings.Contains(string(reason), "truncated") {
		t.Errorf("truncated image not quarantined with its reason: %v %q", err, reason)
	}
	var st statusPayload
	ms := sub.messages("scopewatch/v1/lab/e2e/status")
	if len(ms) == 0 {
		t.Fatal("no status")
	}
	json.Unmarshal(ms[len(ms)-1], &st)
	if st.State != "online" || st.ModelVersion == "" || st.Boot != 1 {
		t.Errorf("status %+v", st)
	}
	// Metrics reflect the run.
	r, _ := http.Get(p.url + "/metrics")
	m, _ := io.ReadAll(r.Body)
	r.Body.Close()
	for _, want := range []string{`scopewatch_images_total{outcome="ok",source="inbox"}`, `scopewatch_errors_total{reason="truncated"}`, "scopewatch_model_info{version="} {
		if !bytes.Contains(m, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}

	took, err := p.term(30 * time.Second)
	if err != nil {
		t.Fatalf("SIGTERM: %v after %s", err, took)
	}
	if !p.notes.has("STOPPING=1") {
		t.Error("no sd_notify STOPPING=1")
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		ms := sub.messages("scopewatch/v1/lab/e2e/status")
		var last statusPayload
		json.Unmarshal(ms[len(ms)-1], &last)
		return last.State == "offline"
	}, "offline status after SIGTERM")
	// Every log line is one JSON object (journald and shippers read them).
	sc := bufio.NewScanner(strings.NewReader(p.logs.String()))
	for sc.Scan() {
		var v map[string]any
		if line := sc.Text(); line != "" && json.Unmarshal([]byte(line), &v) != nil {
			t.Errorf("log line is not JSON: %q", line)
			break
		}
	}
}

func TestServeRefusesBadConfig(t *testing.T) {
	bin := scopewatchBinary(t)
	dir := t.TempDir()
	for _, c := range []struct{ yaml, want string }{
		{"inbox:\n  after_process: archive\n", "inbox.after_process"},
		{"slides:\n  target_cell: 1000\n", "slides.target_cell"},
		{"mqtt:\n  keep_alive: forever\n", "mqtt.keep_alive"},
	} {
		p := filepath.Join(dir, "bad.yaml")
		os.WriteFile(p, []byte(c.yaml), 0o600)
		cmd := exec.Command(bin, "serve", "--config", p)
		out, err := cmd.CombinedOutput()
		if err == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), c.want) {
			t.Errorf("config %q: exit %v, output %q; want exit 1 naming %s", c.yaml, err, out, c.want)
		}
	}
}

// TestServeSlideQualityGate: the real binary and model on two slides of
// crops cut from the same synth slide, one as made and one blurred by
// sigma 2 px; half their cells are parasitized (the reference's slides
// a tenth), which the gate must not take for a stain problem. The blurred slide's result is flagged by the quality gate's
// sharpness check, with the reason and a slide_quality alert; the sharp
// one is judged and passes. The drift monitor is not what flags it.
func TestServeSlideQualityGate(t *testing.T) {
	requireDefaultModel(t)
	port, err := testutil.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	p := startServe(t, state, e2eConfig(t, state, "tcp://127.0.0.1:1", port, "slides:\n  idle_timeout: 0s\n"), port)
	// The gate's reference comes with the drift baseline, loaded (and
	// perhaps recalibrated) after the start.
	testutil.Eventually(t, 5*time.Minute, func() bool {
		resp, err := http.Get(p.url + "/v1/drift")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var st driftStatus
		return json.NewDecoder(resp.Body).Decode(&st) == nil && st.Active
	}, "drift baseline loaded")
	inbox := filepath.Join(state, "inbox")
	const seed, n = 8201, 60
	for _, sl := range []struct {
		name string
		k    synth.Knobs
	}{{"sharp", synth.Knobs{}}, {"blurred", synth.Knobs{Blur: 2}}} {
		for i := range n {
			s := synth.CellAt(seed, sl.k, n, i)
			writeAtomically(t, filepath.Join(inbox, sl.name, s.Name+".png"), encodePNG(t, s.Image))
		}
		writeAtomically(t, filepath.Join(inbox, sl.name, ".done"), nil)
	}
	db := openDB(t, p.dbPath())
	testutil.Eventually(t, 2*time.Minute, func() bool {
		var c int
		db.QueryRow(`SELECT COUNT(*) FROM slides WHERE state = 'complete'`).Scan(&c)
		return c == 2
	}, "both slides complete")
	get := func(slide string) slideSummary {
		resp, err := http.Get(p.url + "/v1/slides/" + slide)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s slideSummary
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	sharp, blurred := get("sharp"), get("blurred")
	if q := sharp.Quality; q == nil || !q.Judged || q.Cells != sharp.Cells-sharp.Infected || len(q.Flags) != 0 {
		t.Fatalf("sharp slide: quality %+v (verdict %s), want judged on its %d uninfected cells, no flags", q, sharp.Verdict, sharp.Cells-sharp.Infected)
	}
	q := blurred.Quality
	if q == nil || !q.Judged || len(q.Flags) != 1 || q.Flags[0].Check != "sharpness" {
		t.Fatalf("blurred slide: quality %+v, want one sharpness flag", q)
	}
	// 60 cells are below slides.min_cells, so both verdicts are
	// inconclusive already; the gate's finding is among the reasons.
	if blurred.Verdict == verdictOK || !slices.ContainsFunc(blurred.Reasons, func(r string) bool { return strings.Contains(r, "refocus") }) {
		t.Fatalf("blurred slide: verdict %s, reasons %q; want not ok, with the gate's reason", blurred.Verdict, blurred.Reasons)
	}
	if slices.ContainsFunc(sharp.Reasons, func(r string) bool { return strings.Contains(r, "reference slides") }) {
		t.Fatalf("sharp slide: reasons %q name the quality gate", sharp.Reasons)
	}
	var alerts int
	db.QueryRow(`SELECT COUNT(*) FROM events WHERE kind = 'slide_quality' AND detail LIKE '%slide blurred:%'`).Scan(&alerts)
	if alerts != 1 {
		t.Fatalf("%d slide_quality events for the blurred slide, want 1", alerts)
	}
	t.Logf("blurred slide: %s", q.Flags[0].Message)
}
