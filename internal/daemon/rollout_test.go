package daemon

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/rollout"
	"github.com/scopewatch/scopewatch/internal/synth"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

// fleet is a throwaway fleet key trusted beside the shipped one, as a
// device trusts the tuning worker's key.
type fleet struct {
	keys string // folder of *.pub
	priv ed25519.PrivateKey
}

func newFleet(t *testing.T) fleet {
	t.Helper()
	keys := t.TempDir()
	src, _ := filepath.Glob(filepath.Join(repoRoot(t), "models", "keys", "*.pub"))
	for _, p := range src {
		raw, _ := os.ReadFile(p)
		os.WriteFile(filepath.Join(keys, filepath.Base(p)), raw, 0o644)
	}
	pub, priv, err := inference.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(t.TempDir(), "fleet")
	if err := inference.WriteKeyPair(prefix, "fleet", pub, priv); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(prefix + ".pub")
	os.WriteFile(filepath.Join(keys, "fleet.pub"), raw, 0o644)
	return fleet{keys: keys, priv: priv}
}

// candidateBundle is the shipped bundle under another version and
// threshold, sealed with the fleet key.
func (f fleet) candidateBundle(t *testing.T, version string, threshold float64) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), version)
	os.MkdirAll(dir, 0o755)
	src := requireDefaultModel(t)
	entries, _ := os.ReadDir(src)
	for _, e := range entries {
		raw, _ := os.ReadFile(filepath.Join(src, e.Name()))
		os.WriteFile(filepath.Join(dir, e.Name()), raw, 0o644)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, inference.ManifestFile))
	var m map[string]any
	json.Unmarshal(raw, &m)
	m["version"], m["threshold"] = version, threshold
	raw, _ = json.Marshal(m)
	os.WriteFile(filepath.Join(dir, inference.ManifestFile), raw, 0o644)
	if _, err := inference.SealBundle(dir, f.priv); err != nil {
		t.Fatal(err)
	}
	return dir
}

// offer publishes a bundle as the tuning worker does: retained chunks,
// then the retained offer.
func (f fleet) offer(t *testing.T, broker, site, dir string) wire.ModelOffer {
	t.Helper()
	keys, _ := inference.LoadPublicKeys(f.keys)
	b, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var archive bytes.Buffer
	if err := inference.PackBundle(b, &archive); err != nil {
		t.Fatal(err)
	}
	o := wire.ModelOffer{Site: site, Name: b.Manifest.Name, Version: b.Manifest.Version, Incumbent: "2026.11.28-2",
		ManifestSHA256: b.ManifestSHA256, Signer: "fleet", Created: time.Now().UTC()}
	chunks, err := wire.SplitModel(&o, archive.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	topics, _ := mqttconn.NewTopics(mqttconn.Root)
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("worker-" + o.Version))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("worker connect: %v", tok.Error())
	}
	defer c.Disconnect(50)
	for i, p := range chunks {
		topic, _ := topics.ModelChunk(site, o.Version, i)
		c.Publish(topic, 1, true, p).WaitTimeout(5 * time.Second)
	}
	topic, _ := topics.ModelOffer(site)
	p, _ := o.Encode()
	if tok := c.Publish(topic, 1, true, p); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish offer: %v", tok.Error())
	}
	return o
}

// startRolloutDaemon starts a daemon as New does with rollout.enabled:
// the slots seeded from model.path, the model served from its slot.
func startRolloutDaemon(t *testing.T, dir string, mutate func(*config.Config)) *testDaemon {
	t.Helper()
	cfg := config.Default()
	cfg.StateDir = dir
	cfg.HTTP.Listen = "127.0.0.1:0"
	cfg.Inbox.Enabled = false
	cfg.Log.Level = "debug"
	mutate(&cfg)
	c, err := config.Decode(strings.NewReader(mustYAML(t, cfg)), nil)
	if err != nil {
		t.Fatalf("test config invalid: %v", err)
	}
	logs := &bytes.Buffer{}
	log := slog.New(slog.NewTextHandler(&syncWriter{w: logs}, nil))
	ro, err := newRolloutLink(rolloutDeps{log: log, now: time.Now, open: openAnalyzer, seed: 7}, c)
	if err != nil {
		t.Fatal(err)
	}
	served := c
	served.Model.Path = ro.ServingPath()
	model, err := openAnalyzer(served, log)
	if err != nil {
		t.Fatal(err)
	}
	d, err := newDaemon(context.Background(), served, daemonDeps{Log: log, Model: model, OpenModel: openAnalyzer, Rollout: ro})
	if err != nil {
		t.Fatal(err)
	}
	td := runTestDaemon(t, d, served, logs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs.String())
		}
		stopRolloutDaemon(td)
	})
	return td
}

// stopRolloutDaemon stops td and waits for it; calling it again returns
// at once (the tests stop one to restart it, and cleanup stops it again).
func stopRolloutDaemon(td *testDaemon) {
	td.cancel()
	err := <-td.done
	td.done <- err
}

func getModel(t *testing.T, url string) modelState {
	t.Helper()
	resp, err := http.Get(url + "/v1/model")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Version string     `json:"model_version"`
		State   modelState `json:"state"`
	}
	json.NewDecoder(resp.Body).Decode(&out)
	if out.Version != out.State.Champion.Version {
		t.Fatalf("serving %s, the slots say %s", out.Version, out.State.Champion.Version)
	}
	return out.State
}

// sendSlide uploads n nominal crops of unseen slides as one slide and
// completes it.
func sendSlide(t *testing.T, url, slide string, seed int64, n int) {
	t.Helper()
	dir := t.TempDir()
	if _, err := synth.WriteCells(context.Background(), synth.CellsConfig{Dir: dir, N: n, Seed: seed, CellsPerSlide: n}); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*", "*.png"))
	if len(files) == 0 {
		files, _ = filepath.Glob(filepath.Join(dir, "*.png"))
	}
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		resp := upload(t, url+"/v1/images?slide="+slide, "image/png", raw)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("upload %s: %d", f, resp.StatusCode)
		}
	}
	resp, err := http.Post(url+"/v1/slides/"+slide+"/complete", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

func goldenDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "golden")
	if _, err := synth.WriteCells(context.Background(), synth.CellsConfig{Dir: dir, N: 100, Seed: 100900, CellsPerSlide: 25}); err != nil {
		t.Fatal(err)
	}
	return dir
}

func rolloutConfig(t *testing.T, broker string, f fleet, golden string) func(*config.Config) {
	return func(c *config.Config) {
		realModelConfig(t, c)
		c.Model.Keys = f.keys
		c.Site, c.Device = "lab", "scope1"
		c.MQTT.Broker = broker
		c.Images.Kind = "crop"
		c.Drift.Enabled = false
		c.Rollout.Enabled = true
		c.Rollout.Golden = golden
		c.Rollout.Shadow.Share, c.Rollout.Shadow.Slides, c.Rollout.Shadow.MinCells = 1, 2, 20
	}
}

// TestRolloutPromotesAndRollsBack: an offer on a real mosquitto is
// downloaded, verified, passes the golden set, runs in shadow on two
// slides (only the champion's results are reported meanwhile), is
// promoted with its evidence in the alert, serves; a rollback by HTTP
// returns to the shipped model, which then serves again after a restart,
// and the version rolled back from is not taken again.
func TestRolloutPromotesAndRollsBack(t *testing.T) {
	applyMallocLimits(slog.New(slog.DiscardHandler)) // as New does
	b := testutil.StartMosquitto(t)
	f := newFleet(t)
	golden := goldenDir(t)
	sub := newSubscriber(t, b.URL(), "rollout-sub", "scopewatch/v1/lab/scope1/#")
	dir := t.TempDir()
	td := startRolloutDaemon(t, dir, rolloutConfig(t, b.URL(), f, golden))
	shipped := getModel(t, td.url).Champion.Version
	runtime.GC()
	debug.FreeOSMemory()
	rssBefore := readMemory(os.Getpid()).RSS

	next := "2026.12.03-1_cand"
	f.offer(t, b.URL(), "lab", f.candidateBundle(t, next, 0.8309396110366593))
	testutil.Eventually(t, 60*time.Second, func() bool { return getModel(t, td.url).Stage == rollout.StageShadow },
		"the candidate never reached shadow: %+v", getModel(t, td.url))
	st := getModel(t, td.url)
	if st.Candidate == nil || st.Candidate.Version != next || st.Champion.Version != shipped {
		t.Fatalf("in shadow: %+v", st)
	}
	sendSlide(t, td.url, "s1", 100951, 15)
	// Reported, not asserted: the in-process figure includes the test's
	// own allocations; the candidate's session is the bulk of it.
	runtime.GC()
	debug.FreeOSMemory()
	t.Logf("resident set %d kB before the offer, %d kB with the candidate in shadow", rssBefore, readMemory(os.Getpid()).RSS)
	if st := getModel(t, td.url); st.Shadow == nil || st.Shadow.Cells != 15 || st.Champion.Version != shipped {
		t.Fatalf("after one slide: %+v", st)
	}
	sendSlide(t, td.url, "s2", 100952, 15)
	testutil.Eventually(t, 30*time.Second, func() bool { return getModel(t, td.url).Champion.Version == next },
		"not promoted: %+v", getModel(t, td.url))
	st = getModel(t, td.url)
	if st.Stage != rollout.StagePromoted || st.Previous == nil || st.Previous.Version != shipped || st.Floor != next {
		t.Fatalf("after promotion: %+v", st)
	}
	alertTopic := "scopewatch/v1/lab/scope1/alert"
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, m := range sub.messages(alertTopic) {
			if bytes.Contains(m, []byte("model_promoted")) && bytes.Contains(m, []byte("agreement 1.0000")) && bytes.Contains(m, []byte("rules:")) {
				return true
			}
		}
		return false
	}, "no model_promoted alert with its evidence")

	resp, err := http.Post(td.url+"/v1/model/rollback?by=test", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("rollback: %d", resp.StatusCode)
	}
	if st := getModel(t, td.url); st.Champion.Version != shipped || st.Stage != rollout.StageRolledBack {
		t.Fatalf("after rollback: %+v", st)
	}
	// A second rollback has nowhere to go back to but the model just left;
	// the version rolled back from is refused when offered again.
	stopRolloutDaemon(td)
	td2 := startRolloutDaemon(t, dir, rolloutConfig(t, b.URL(), f, golden))
	testutil.Eventually(t, 30*time.Second, func() bool {
		st := getModel(t, td2.url)
		return st.Stage == rollout.StageRefused && strings.Contains(st.Last.Detail, "rolled back")
	}, "the rolled-back version's retained offer was not refused after a restart: %+v", getModel(t, td2.url))
	if st := getModel(t, td2.url); st.Champion.Version != shipped {
		t.Fatalf("after a restart: serving %s, want %s", st.Champion.Version, shipped)
	}
}

// TestRolloutRefuses: a candidate that calls almost every cell
// uninfected is refused by the golden set; one that labels many cells
// differently from the champion passes a lenient golden floor but is
// refused in shadow, with the broken rule and the evidence. Neither ever
// serves.
func TestRolloutRefuses(t *testing.T) {
	b := testutil.StartMosquitto(t)
	f := newFleet(t)
	golden := goldenDir(t)
	base := rolloutConfig(t, b.URL(), f, golden)
	td := startRolloutDaemon(t, t.TempDir(), func(c *config.Config) {
		base(c)
		c.Rollout.MinAccuracy, c.Rollout.MinSensitivity = 0.3, 0.9
		c.Rollout.Shadow.MaxDisagreement = 0.05
	})
	shipped := getModel(t, td.url).Champion.Version

	f.offer(t, b.URL(), "lab", f.candidateBundle(t, "2026.12.03-1_blind", 0.99999))
	testutil.Eventually(t, 60*time.Second, func() bool {
		st := getModel(t, td.url)
		return st.Stage == rollout.StageRefused && st.Last.Version == "2026.12.03-1_blind"
	}, "the blind candidate was not refused: %+v", getModel(t, td.url))
	if d := getModel(t, td.url).Last.Detail; !strings.Contains(d, "sensitivity") {
		t.Fatalf("refusal %q", d)
	}

	f.offer(t, b.URL(), "lab", f.candidateBundle(t, "2026.12.03-2_eager", 0.001))
	testutil.Eventually(t, 60*time.Second, func() bool { return getModel(t, td.url).Stage == rollout.StageShadow },
		"the eager candidate never reached shadow: %+v", getModel(t, td.url))
	sendSlide(t, td.url, "r1", 100953, 15)
	sendSlide(t, td.url, "r2", 100954, 15)
	testutil.Eventually(t, 30*time.Second, func() bool { return getModel(t, td.url).Stage == rollout.StageRefused },
		"the eager candidate was not refused in shadow: %+v", getModel(t, td.url))
	st := getModel(t, td.url)
	if !strings.Contains(st.Last.Detail, "in shadow") || !strings.Contains(st.Last.Detail, "differently") || st.Champion.Version != shipped || st.Candidate != nil {
		t.Fatalf("after the shadow refusal: %+v", st)
	}
}

// TestRolloutSwapsKeepMemory: 50 promotions and 50 rollbacks (each loads
// a bundle into a new ONNX Runtime session, swaps it in and closes the old
// one) grow the process's resident set by less than 10 MB: session churn
// leaks in some onnxruntime_go versions (its issue #113). The growth is
// measured after a warm-up, so allocator and library caches are counted
// once.
func TestRolloutSwapsKeepMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("100 model loads")
	}
	// The malloc settings New applies (and the unit sets): without them
	// glibc keeps freed blocks in per-thread arenas, which is not a leak
	// but shows as one here.
	applyMallocLimits(slog.New(slog.DiscardHandler))
	b := testutil.StartMosquitto(t)
	f := newFleet(t)
	td := startRolloutDaemon(t, t.TempDir(), rolloutConfig(t, b.URL(), f, goldenDir(t)))
	ro := td.d.ro
	next := "2026.12.03-1_swap"
	if _, err := ro.slots.Stage(f.candidateBundle(t, next, 0.8309396110366593), next, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := ro.slots.Promote(); err != nil {
		t.Fatal(err)
	}
	swap := func() {
		t.Helper()
		// Rollback alternates between the two slots: each is one
		// promotion's or one rollback's worth of loading and closing.
		if _, err := ro.rollback(context.Background(), "memory test"); err != nil {
			t.Fatal(err)
		}
	}
	rss := func() int64 {
		runtime.GC()
		debug.FreeOSMemory()
		return readMemory(os.Getpid()).RSS
	}
	for range 10 {
		swap()
	}
	before := rss()
	versions := map[string]int{}
	for i := range 100 {
		swap()
		versions[td.d.model.ModelVersion()]++
		if os.Getenv("SCOPEWATCH_SWAP_TRACE") != "" && (i+1)%20 == 0 {
			t.Logf("after %d swaps: RSS %d kB, anon %d kB", i+1, rss(), readMemory(os.Getpid()).Anon)
		}
	}
	after := rss()
	t.Logf("RSS %d kB after 10 warm-up swaps, %d kB after 100 more (%+d kB); served %v", before, after, after-before, versions)
	if len(versions) != 2 {
		t.Fatalf("the swaps did not alternate between the two models: %v", versions)
	}
	if after-before > 10<<10 {
		t.Errorf("resident set grew by %d kB over 100 model swaps, more than 10 MB", after-before)
	}
}

// TestRolloutWatchRollsBack: a promoted model whose drift monitor alarms
// on its scores within its first watch_cells cells is rolled back with
// the reason; a focus alarm (the images, not the model) and an alarm after
// the watch ended are not.
func TestRolloutWatchRollsBack(t *testing.T) {
	b := testutil.StartMosquitto(t)
	f := newFleet(t)
	base := rolloutConfig(t, b.URL(), f, goldenDir(t))
	td := startRolloutDaemon(t, t.TempDir(), func(c *config.Config) { base(c); c.Rollout.WatchCells = 30 })
	ro := td.d.ro
	shipped := td.d.model.ModelVersion()
	promote := func(v string) {
		t.Helper()
		if _, err := ro.slots.Stage(f.candidateBundle(t, v, 0.8309396110366593), v, v); err != nil {
			t.Fatal(err)
		}
		ro.decide(&shadowRun{cand: rollout.Candidate{Version: v}, model: nopAnalyzer{}, images: 1, cells: 200, agree: 200, champNS: 10, candNS: 10,
			done: []shadowSlideResult{{Slide: "s", Cells: 200}}})
		if got := td.d.model.ModelVersion(); got != v {
			t.Fatalf("promotion of %s: serving %s (%+v)", v, got, ro.state())
		}
	}
	alarm := func(signal string) drift.Event {
		return drift.Event{Signal: signal, Level: drift.LevelAlarm, Statistic: 9, Threshold: 1, Window: 50, Index: 10}
	}

	promote("2026.12.03-1_watch")
	ro.driftAlarm(alarm(drift.SignalFocus), "2026.12.03-1_watch")
	if td.d.model.ModelVersion() != "2026.12.03-1_watch" {
		t.Fatal("a focus alarm rolled the model back")
	}
	ro.driftAlarm(alarm(drift.SignalScores), "2026.12.03-1_watch")
	st := ro.state()
	if td.d.model.ModelVersion() != shipped || st.Stage != rollout.StageRolledBack || !strings.Contains(st.Last.Detail, "scores_cvm") {
		t.Fatalf("after a score alarm in the watch: serving %s, %+v", td.d.model.ModelVersion(), st)
	}

	promote("2026.12.04-1_watch")
	sendSlide(t, td.url, "w1", 100960, 30) // the watch's 30 cells
	ro.driftAlarm(alarm(drift.SignalScores), "2026.12.04-1_watch")
	if td.d.model.ModelVersion() != "2026.12.04-1_watch" {
		t.Fatal("an alarm after the watch ended rolled the model back")
	}
}

// nopAnalyzer stands for a candidate already unloaded.
type nopAnalyzer struct{}

func (nopAnalyzer) Analyze(context.Context, []byte, string) (analysis, error) { return analysis{}, nil }
func (nopAnalyzer) ModelVersion() string                                      { return "nop" }
func (nopAnalyzer) SetThreshold(float64)                                      {}
func (nopAnalyzer) Close() error                                              { return nil }
