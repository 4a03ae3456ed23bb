package rollout

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
	"github.com/scopewatch/scopewatch/internal/testutil"
)

func connect(t *testing.T, b *testutil.Broker, id string) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(id).SetConnectRetry(false).SetAutoReconnect(false)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v\n%s", id, tok.Error(), b.Log())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c
}

// publishOffer publishes an offer as the tuning worker does: the chunks
// retained first (those in only, all when nil), then the retained offer.
func publishOffer(t *testing.T, c mqtt.Client, topics mqttconn.Topics, o wire.ModelOffer, chunks []wire.ModelChunk, only []int) {
	t.Helper()
	if only == nil {
		for i := range chunks {
			only = append(only, i)
		}
	}
	for _, i := range only {
		topic, err := topics.ModelChunk(o.Site, o.Version, i)
		if err != nil {
			t.Fatal(err)
		}
		p, _ := json.Marshal(chunks[i])
		if tok := c.Publish(topic, 1, true, p); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish chunk %d: %v", i, tok.Error())
		}
	}
	topic, _ := topics.ModelOffer(o.Site)
	p, err := o.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if tok := c.Publish(topic, 1, true, p); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish offer: %v", tok.Error())
	}
}

type takerRig struct {
	slots  *Slots
	taker  *Taker
	mu     sync.Mutex
	events []Event
	ready  chan Candidate
}

func (r *takerRig) stages() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var s []string
	for _, e := range r.events {
		s = append(s, e.Stage+" "+e.Version+": "+e.Detail)
	}
	return strings.Join(s, "\n")
}

func (r *takerRig) last() Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.events) == 0 {
		return Event{}
	}
	return r.events[len(r.events)-1]
}

func startTaker(t *testing.T, dir, golden string, b *testutil.Broker, id string) *takerRig {
	t.Helper()
	keys := trusted(t)
	slots, err := OpenSlots(filepath.Join(dir, "slots"), defaultBundle(), identify(keys), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &takerRig{slots: slots, ready: make(chan Candidate, 4)}
	topics, _ := mqttconn.NewTopics(mqttconn.Root)
	r.taker, err = NewTaker(TakerConfig{
		Slots: slots, Topics: topics, Site: "lab-1", Staging: filepath.Join(dir, "staging"),
		Verify: func(archive string) (Verified, error) {
			bb, err := inference.OpenBundle(archive, inference.BundleOptions{TrustedKeys: keys, TempDir: t.TempDir()})
			if err != nil {
				return Verified{}, err
			}
			return Verified{Dir: bb.Dir, Version: bb.Manifest.Version, ManifestSHA256: bb.ManifestSHA256, Close: func() { bb.Close() }}, nil
		},
		Score: func(dir string) (Scorer, func(), error) {
			bb, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: keys})
			if err != nil {
				return nil, nil, err
			}
			c, err := inference.NewClassifier(bb, inference.ClassifierOptions{NoFeatures: true})
			if err != nil {
				bb.Close()
				return nil, nil, err
			}
			return c, func() { c.Close(); bb.Close() }, nil
		},
		Golden: Golden{Dir: golden},
		Ready:  func(c Candidate) error { r.ready <- c; return nil },
		Events: func(e Event) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	r.taker.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.taker.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	c := connect(t, b, id)
	if err := r.taker.Subscribe(c); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestTakerFetchesStagesAndChecks: a retained offer on a real mosquitto,
// half its chunks at first: the taker stops (a restart) with them on disk,
// a new taker resumes, takes the rest, verifies the archive, stages it in
// the free slot without touching the serving one, passes it through the
// golden set and hands it on.
func TestTakerFetchesStagesAndChecks(t *testing.T) {
	b := testutil.StartMosquitto(t)
	topics, _ := mqttconn.NewTopics(mqttconn.Root)
	golden := goldenSet(t, 100)
	v := "2026.12.03-1_abcd"
	o, chunks := packedOffer(t, newerBundle(t, v))
	pub := connect(t, b, "worker")
	half := make([]int, 0, len(chunks)/2)
	for i := 0; i < len(chunks); i += 2 {
		half = append(half, i)
	}
	publishOffer(t, pub, topics, o, chunks, half)

	dir := t.TempDir()
	first := startTaker(t, dir, golden, b, "device-1")
	testutil.Eventually(t, 10*time.Second, func() bool {
		n, _ := filepath.Glob(filepath.Join(dir, "staging", v, "*"+chunkSuffix))
		return len(n) == len(half)
	}, "the first half of the chunks never reached the disk:\n%s", first.stages())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := first.taker.Close(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	serving := first.slots.Champion()

	publishOffer(t, pub, topics, o, chunks, nil)
	second := startTaker(t, dir, golden, b, "device-1b")
	var c Candidate
	select {
	case c = <-second.ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("no candidate; stages:\n%s", second.stages())
	}
	if c.Version != v || c.ManifestSHA256 != o.ManifestSHA256 || c.Golden.Images != 100 || c.Golden.Accuracy < DefaultGoldenAccuracy {
		t.Fatalf("candidate %+v", c)
	}
	if !strings.Contains(second.stages(), fmt.Sprintf(" %d already on disk", len(half))) {
		t.Errorf("the second taker did not resume the download:\n%s", second.stages())
	}
	if got := second.slots.Champion(); got != serving || c.Dir == filepath.Join(dir, "slots", serving.Name) {
		t.Fatalf("staging touched the serving slot: champion %+v, candidate in %s", got, c.Dir)
	}
	if st := second.slots.Staged(); st == nil || st.Version != v {
		t.Fatalf("staged %+v", st)
	}
	if ver, _, err := identify(trusted(t))(c.Dir); err != nil || ver != v {
		t.Fatalf("the staged slot: %s %v", ver, err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "staging")); len(left) != 0 {
		t.Errorf("the download was left in staging: %v", left)
	}
}

// TestTakerRefuses: an offer not newer than the floor, and one whose
// archive is not what the offer says, are refused with the reason and
// nothing is staged.
func TestTakerRefuses(t *testing.T) {
	b := testutil.StartMosquitto(t)
	topics, _ := mqttconn.NewTopics(mqttconn.Root)
	golden := goldenSet(t, 50)
	pub := connect(t, b, "worker")
	r := startTaker(t, t.TempDir(), golden, b, "device-1")

	old, oldChunks := packedOffer(t, newerBundle(t, "2026.11.01-1"))
	publishOffer(t, pub, topics, old, oldChunks, nil)
	testutil.Eventually(t, 10*time.Second, func() bool { return r.last().Stage == StageRefused }, "an old offer was not refused:\n%s", r.stages())
	if !strings.Contains(r.last().Detail, "not newer") {
		t.Fatalf("refusal %q", r.last().Detail)
	}

	o, chunks := packedOffer(t, newerBundle(t, "2026.12.05-1_ab"))
	o.ManifestSHA256 = strings.Repeat("0", 64) // the worker says one bundle, the archive holds another
	publishOffer(t, pub, topics, o, chunks, nil)
	testutil.Eventually(t, 20*time.Second, func() bool {
		e := r.last()
		return e.Stage == StageRefused && e.Version == o.Version
	}, "a mismatching archive was not refused:\n%s", r.stages())
	if !strings.Contains(r.last().Detail, "offer says") || r.slots.Staged() != nil {
		t.Fatalf("refusal %q, staged %+v", r.last().Detail, r.slots.Staged())
	}
	select {
	case c := <-r.ready:
		t.Fatalf("a refused offer became a candidate: %+v", c)
	default:
	}
}
