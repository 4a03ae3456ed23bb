package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// Stages of a candidate, as Event.Stage and Status.Stage.
const (
	StageIdle        = "idle"
	StageDownloading = "downloading"
	StageValidating  = "validating"
	StageShadow      = "shadow"
	StagePromoted    = "promoted"
	StageRefused     = "refused"
	StageRolledBack  = "rolled_back"
)

// Event is a step of a rollout with its evidence, for the daemon's alerts
// and journal.
type Event struct {
	Stage   string        `json:"stage"`
	Version string        `json:"version"`
	Detail  string        `json:"detail,omitempty"`
	Golden  *GoldenResult `json:"golden,omitempty"`
	At      time.Time     `json:"at"`
}

// Candidate is a verified, staged bundle that passed the golden set: what
// the daemon runs in shadow beside the champion.
type Candidate struct {
	Version        string
	ManifestSHA256 string
	// Dir is its slot (never the serving one).
	Dir    string
	Golden GoldenResult
}

// Subscriber is the MQTT client the taker subscribes with (paho's
// mqtt.Client).
type Subscriber interface {
	Subscribe(topic string, qos byte, callback mqtt.MessageHandler) mqtt.Token
	Unsubscribe(topics ...string) mqtt.Token
}

var _ Subscriber = mqtt.Client(nil)

// Verified is an archive opened and verified as a bundle (signature by a
// trusted key, hashes, shapes): its folder, identity and a cleanup.
type Verified struct {
	Dir            string
	Version        string
	ManifestSHA256 string
	Close          func()
}

// TakerConfig is what a Taker needs; every field but Log and Now is
// required.
type TakerConfig struct {
	Slots  *Slots
	Topics mqttconn.Topics
	Site   string
	// Staging holds the downloads (one folder per offered version).
	Staging    string
	MaxArchive int64 // 0: DefaultMaxArchive
	// Verify opens an assembled archive as a device trusts a bundle.
	Verify func(archive string) (Verified, error)
	// Score loads a staged bundle for the golden check; close releases it.
	Score  func(dir string) (s Scorer, close func(), err error)
	Golden Golden
	// Ready receives a candidate that passed the golden set and starts
	// its shadow run; an error refuses it.
	Ready func(Candidate) error
	// Events receives every stage change.
	Events func(Event)
	Log    *slog.Logger     // nil: discard
	Now    func() time.Time // nil: time.Now
}

// Taker follows the site's retained model offer: it downloads an offer
// newer than the floor chunk by chunk onto disk, verifies the archive,
// stages it into the free slot and checks it on the golden set. It owns
// one goroutine, which does all the work, so that the MQTT client's
// callbacks never wait on the disk or ONNX Runtime.
type Taker struct {
	cfg TakerConfig
	log *slog.Logger
	now func() time.Time

	in   chan mqtt.Message
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	sub    Subscriber
	status Event
	// dl is the download in progress (owned by the goroutine).
	dl        *Download
	progress  time.Time // when dl last got a chunk
	chunkSub  string
	lastOffer string // sha256 of the last offer acted on
}

// NewTaker checks the configuration; Start runs it.
func NewTaker(cfg TakerConfig) (*Taker, error) {
	if cfg.Slots == nil || cfg.Site == "" || cfg.Staging == "" || cfg.Verify == nil || cfg.Score == nil || cfg.Golden.Dir == "" || cfg.Ready == nil {
		return nil, errors.New("rollout: taker needs slots, site, staging folder, verify, score, a golden set and ready")
	}
	t := &Taker{cfg: cfg, log: cfg.Log, now: cfg.Now, in: make(chan mqtt.Message, 64), stop: make(chan struct{}), done: make(chan struct{})}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.now == nil {
		t.now = time.Now
	}
	t.status = Event{Stage: StageIdle, At: t.now().UTC()}
	return t, nil
}

// Start runs the taker's goroutine.
func (t *Taker) Start() { go t.loop() }

// Close stops the goroutine, within ctx. A download in progress stays on
// disk and resumes at the next start.
func (t *Taker) Close(ctx context.Context) error {
	select {
	case <-t.stop:
	default:
		close(t.stop)
	}
	select {
	case <-t.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("rollout: taker did not stop: %w", ctx.Err())
	}
}

// Status is the last stage reached.
func (t *Taker) Status() Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status
}

// Subscribe subscribes to the site's offer (and, while downloading, to its
// chunks) with c; call it on every connection, as a new session has no
// subscriptions. The broker delivers the retained offer at once.
func (t *Taker) Subscribe(c Subscriber) error {
	topic, err := t.cfg.Topics.ModelOffer(t.cfg.Site)
	if err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	t.mu.Lock()
	t.sub = c
	chunks := t.chunkSub
	t.mu.Unlock()
	tok := c.Subscribe(topic, 1, t.deliver)
	if chunks != "" {
		c.Subscribe(chunks, 1, t.deliver)
	}
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("rollout: subscribe %s: no answer from the broker", topic)
	}
	return tok.Error()
}

// deliver hands a message to the goroutine. The broker keeps the offer
// and chunks retained, so a message dropped here (the goroutine far
// behind, or stopping) comes again with the next subscription.
func (t *Taker) deliver(_ mqtt.Client, m mqtt.Message) {
	select {
	case t.in <- m:
	case <-t.stop:
		m.Ack()
	case <-time.After(5 * time.Second):
		t.log.Warn("rollout message dropped: the taker is busy", "topic", m.Topic())
		m.Ack()
	}
}

// stallAfter is how long a download may go without a chunk before the
// chunks are asked for again (a resubscription makes the broker send the
// retained ones): a chunk dropped on the way must not stall it for ever.
const stallAfter = 30 * time.Second

func (t *Taker) loop() {
	defer close(t.done)
	// A candidate staged before a restart is checked again and handed on:
	// its shadow starts over, as the daemon keeps no shadow evidence.
	if c := t.cfg.Slots.Staged(); c != nil {
		t.lastOffer = ""
		t.check(c.Version, c.ManifestSHA256, t.cfg.Slots.slotPath(c.Name))
	}
	tick := time.NewTicker(stallAfter / 3)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case m := <-t.in:
			t.handle(m)
			m.Ack()
		case <-tick.C:
			if t.dl != nil && t.now().Sub(t.progress) > stallAfter {
				t.log.Info("model download stalled; asking for its chunks again", "version", t.dl.Offer().Version, "missing", t.dl.Missing())
				t.progress = t.now()
				t.mu.Lock()
				filter, sub := t.chunkSub, t.sub
				t.mu.Unlock()
				if sub != nil && filter != "" {
					sub.Unsubscribe(filter)
					sub.Subscribe(filter, 1, t.deliver)
				}
			}
		}
	}
}

func (t *Taker) handle(m mqtt.Message) {
	offerTopic, _ := t.cfg.Topics.ModelOffer(t.cfg.Site)
	if m.Topic() == offerTopic {
		if len(m.Payload()) == 0 {
			return // the worker cleared its offer
		}
		o, err := wire.DecodeModelOffer(m.Payload())
		if err != nil {
			t.log.Warn("model offer ignored", "topic", m.Topic(), "err", err)
			return
		}
		t.offer(o)
		return
	}
	if t.dl == nil || len(m.Payload()) == 0 {
		return
	}
	c, err := wire.DecodeModelChunk(m.Payload())
	if err != nil {
		t.log.Warn("model chunk ignored", "topic", m.Topic(), "err", err)
		return
	}
	if err := t.dl.Add(c); err != nil {
		t.log.Warn("model chunk refused", "topic", m.Topic(), "err", err)
		return
	}
	t.progress = t.now()
	if t.dl.Missing() == 0 {
		t.finishDownload()
	}
}

// offer starts (or resumes) the download of an offer the floor admits.
func (t *Taker) offer(o wire.ModelOffer) {
	if o.Site != t.cfg.Site {
		t.log.Warn("model offer for another site ignored", "site", o.Site, "version", o.Version)
		return
	}
	if o.SHA256 == t.lastOffer {
		return // the retained offer again, after a reconnect
	}
	if s := t.cfg.Slots.Staged(); s != nil && s.ManifestSHA256 == o.ManifestSHA256 {
		t.lastOffer = o.SHA256
		return // already staged; the daemon has it in shadow
	}
	t.lastOffer = o.SHA256
	if err := t.cfg.Slots.Admit(o.Version); err != nil {
		t.refuse(o.Version, err.Error(), nil)
		return
	}
	t.stopChunks()
	d, err := StartDownload(t.cfg.Staging, o, t.cfg.MaxArchive)
	if err != nil {
		t.refuse(o.Version, err.Error(), nil)
		return
	}
	t.dl, t.progress = d, t.now()
	t.emit(Event{Stage: StageDownloading, Version: o.Version, Detail: fmt.Sprintf("%d bytes in %d chunks, %d already on disk", o.Size, o.Chunks, d.Have())})
	if d.Missing() == 0 {
		t.finishDownload()
		return
	}
	filter, err := t.cfg.Topics.ModelChunkFilter(t.cfg.Site, o.Version)
	if err != nil {
		t.refuse(o.Version, err.Error(), nil)
		return
	}
	t.mu.Lock()
	t.chunkSub = filter
	sub := t.sub
	t.mu.Unlock()
	if sub != nil {
		// Not waited for: the callback runs on this goroutine's input, and
		// the token completes on the client's.
		sub.Subscribe(filter, 1, t.deliver)
	}
}

func (t *Taker) stopChunks() {
	t.mu.Lock()
	filter, sub := t.chunkSub, t.sub
	t.chunkSub = ""
	t.mu.Unlock()
	if filter != "" && sub != nil {
		sub.Unsubscribe(filter)
	}
}

// finishDownload assembles, verifies, stages and checks the candidate.
func (t *Taker) finishDownload() {
	d := t.dl
	t.dl = nil
	t.stopChunks()
	o := d.Offer()
	t.emit(Event{Stage: StageValidating, Version: o.Version, Detail: "assembling and verifying"})
	archive, err := d.Assemble()
	if err != nil {
		t.lastOffer = "" // fetched again at the next delivery of the offer
		t.refuse(o.Version, err.Error(), nil)
		return
	}
	v, err := t.cfg.Verify(archive)
	if err != nil {
		d.Remove()
		t.refuse(o.Version, fmt.Sprintf("the bundle does not verify: %v", err), nil)
		return
	}
	defer v.Close()
	if v.Version != o.Version || v.ManifestSHA256 != o.ManifestSHA256 {
		d.Remove()
		t.refuse(o.Version, fmt.Sprintf("the archive holds %s (manifest sha256 %s), the offer says %s (%s)", v.Version, v.ManifestSHA256, o.Version, o.ManifestSHA256), nil)
		return
	}
	dir, err := t.cfg.Slots.Stage(v.Dir, v.Version, v.ManifestSHA256)
	if err != nil {
		t.refuse(o.Version, err.Error(), nil)
		return
	}
	d.Remove()
	t.check(o.Version, o.ManifestSHA256, dir)
}

// check runs the golden set on a staged candidate and hands it on.
func (t *Taker) check(version, manifestSHA string, dir string) {
	s, closeScorer, err := t.cfg.Score(dir)
	if err != nil {
		t.cfg.Slots.Discard()
		t.refuse(version, fmt.Sprintf("the staged bundle does not load: %v", err), nil)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-t.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	g, err := t.cfg.Golden.Check(ctx, version, s)
	cancel()
	closeScorer()
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return // stopping; the staged candidate is checked again at the next start
		}
		t.cfg.Slots.Discard()
		t.refuse(version, err.Error(), &g)
		return
	}
	if err := t.cfg.Ready(Candidate{Version: version, ManifestSHA256: manifestSHA, Dir: dir, Golden: g}); err != nil {
		t.cfg.Slots.Discard()
		t.refuse(version, err.Error(), &g)
		return
	}
	t.emit(Event{Stage: StageShadow, Version: version, Golden: &g,
		Detail: fmt.Sprintf("golden set: accuracy %.4f, sensitivity %.4f on %d images", g.Accuracy, g.Sensitivity, g.Images)})
}

func (t *Taker) refuse(version, detail string, g *GoldenResult) {
	t.log.Warn("model offer refused", "version", version, "reason", detail)
	t.emit(Event{Stage: StageRefused, Version: version, Detail: detail, Golden: g})
}

func (t *Taker) emit(e Event) {
	e.At = t.now().UTC()
	t.mu.Lock()
	t.status = e
	t.mu.Unlock()
	if t.cfg.Events != nil {
		t.cfg.Events(e)
	}
}
