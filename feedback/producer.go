package feedback

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/scopewatch/scopewatch/feedback/selection"
	"github.com/scopewatch/scopewatch/feedback/wire"
	"github.com/scopewatch/scopewatch/internal/mqttconn"
)

// Producer is the device-side entry point for feedback: the daemon offers
// every classified cell, and the producer selects, encodes (chunking large
// crops), enqueues durably and remembers what it sent for labelling.
type Producer struct {
	cfg    ProducerConfig
	topic  string
	sel    *selection.Selector
	outbox *Outbox
	labels *Labels
}

// ProducerConfig identifies the device. DeviceSecret keys the slide hash
// (keep it in the device's state directory, never send it).
type ProducerConfig struct {
	Site, Device string
	// Topics carries the fleet's topic root (zero value: scopewatch/v1).
	Topics       mqttconn.Topics
	DeviceSecret []byte
	ModelVersion string
	// Threshold is the model's decision threshold (for label_predicted).
	Threshold float64
	Now       func() time.Time
}

// Cell is one classified cell offered as feedback.
type Cell struct {
	SlideID string // never leaves the device; only its keyed hash does
	Crop    []byte // PNG or JPEG bytes of the cell
	P       float64
	// Clean, when set, turns Crop into the bytes that are sent (for example
	// a re-encoding that drops file metadata). It runs only for selected
	// cells, since most cells are not sent; the day's byte budget is
	// charged with the cleaned size.
	Clean func(crop []byte) ([]byte, error)
}

// NewProducer wires a selector, an outbox and the labels store.
func NewProducer(cfg ProducerConfig, sel *selection.Selector, outbox *Outbox, labels *Labels) (*Producer, error) {
	topic, err := cfg.Topics.Device(cfg.Site, cfg.Device, mqttconn.KindFeedback)
	if err != nil {
		return nil, fmt.Errorf("feedback producer: %w", err)
	}
	if len(cfg.DeviceSecret) < 16 {
		return nil, errors.New("feedback producer: device secret shorter than 16 bytes")
	}
	if cfg.ModelVersion == "" {
		return nil, errors.New("feedback producer: model version is empty")
	}
	if cfg.Threshold <= 0 || cfg.Threshold >= 1 {
		cfg.Threshold = 0.5
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Producer{cfg: cfg, topic: topic, sel: sel, outbox: outbox, labels: labels}, nil
}

// StartWindow forwards a new drift window to the selector.
func (p *Producer) StartWindow(drifted bool) { p.sel.StartWindow(drifted) }

// SetModelVersion switches the version stamped on samples (after a model
// swap).
func (p *Producer) SetModelVersion(v string) { p.cfg.ModelVersion = v }

// Offer considers one cell of drift window `window`. It returns the sample
// id and true when the cell was selected and stored in the outbox. An
// outbox that drops the sample (full of results) is not an error for the
// caller: it is counted and alerted by the outbox.
func (p *Producer) Offer(ctx context.Context, window int64, c Cell) (string, bool, error) {
	reason, ok := p.sel.Consider(c.P, len(c.Crop))
	if !ok {
		return "", false, nil
	}
	if c.Clean != nil {
		cleaned, err := c.Clean(c.Crop)
		if err != nil {
			p.sel.Charge(-len(c.Crop))
			return "", false, fmt.Errorf("feedback crop: %w", err)
		}
		p.sel.Charge(len(cleaned) - len(c.Crop))
		c.Crop = cleaned
	}
	label := wire.LabelUninfected
	if c.P >= p.cfg.Threshold {
		label = wire.LabelParasitized
	}
	s := wire.Sample{Device: p.cfg.Device, Site: p.cfg.Site, SlideHash: wire.SlideHash(c.SlideID, p.cfg.DeviceSecret),
		PParasitized: c.P, LabelPredicted: label, ModelVersion: p.cfg.ModelVersion, Time: p.cfg.Now().UTC(), Reason: reason}
	s.ID = wire.SampleID(s.Device, s.SlideHash, wire.SHA256Hex(c.Crop), s.ModelVersion)
	recs, err := SampleRecords(p.topic, s, c.Crop)
	if err != nil {
		return "", false, fmt.Errorf("feedback sample: %w", err)
	}
	// Remember first: a label can only be accepted for a sample we know,
	// and a sample remembered but never sent is harmless.
	if p.labels != nil {
		if err := p.labels.Sent(ctx, s, window); err != nil {
			return "", false, err
		}
	}
	if err := p.outbox.EnqueueBatch(ctx, recs...); err != nil {
		if errors.Is(err, ErrDropped) {
			return s.ID, false, nil
		}
		return "", false, err
	}
	return s.ID, true, nil
}

// SampleRecords encodes s with the crop image (see wire.Sample.Encode) into
// outbox records for topic: the sample and its chunks, if any, are feedback
// records at QoS 1 in one drop group, so a full outbox drops a sample whole.
func SampleRecords(topic string, s wire.Sample, crop []byte) ([]Record, error) {
	msgs, err := s.Encode(crop)
	if err != nil {
		return nil, err
	}
	recs := make([]Record, len(msgs))
	for i, m := range msgs {
		recs[i] = Record{ID: m.ID, Kind: KindFeedback, Topic: topic, Payload: m.Payload, QoS: 1, Group: s.ID}
	}
	return recs, nil
}
