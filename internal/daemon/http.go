package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/rollout"
)

// httpHandler serves:
//
//	POST /v1/images?slide=ID[&name=N][&kind=crop|field|auto][&complete=1]
//	     raw image body, or multipart/form-data with the image in a file part
//	GET  /v1/slides/{id}            the slide's counts (summary once complete)
//	POST /v1/slides/{id}/complete   complete the slide now
//	GET  /v1/drift                  the drift tests' statistics and thresholds
//	POST /v1/drift/ack[?by=NAME]    acknowledge drift events: detection restarts
//	GET  /healthz /readyz /metrics
//
// With http.token set, every /v1/ route needs "Authorization: Bearer
// TOKEN"; health and metrics stay open for systemd and Prometheus.
func (d *Daemon) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/images", d.authorized(d.handleUpload))
	mux.HandleFunc("GET /v1/slides/{id}", d.authorized(d.handleSlide))
	mux.HandleFunc("POST /v1/slides/{id}/complete", d.authorized(d.handleComplete))
	mux.HandleFunc("GET /v1/drift", d.authorized(d.handleDriftStatus))
	mux.HandleFunc("POST /v1/drift/ack", d.authorized(d.handleDriftAck))
	mux.HandleFunc("GET /v1/model", d.authorized(d.handleModel))
	mux.HandleFunc("POST /v1/model/rollback", d.authorized(d.handleRollback))
	mux.HandleFunc("GET /healthz", d.handleHealth)
	mux.HandleFunc("GET /readyz", d.handleReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

// authorized checks the bearer token of the configuration in force (it is
// reloaded on SIGHUP, so a token can be rotated without a restart).
func (d *Daemon) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		want := d.config().HTTP.Token
		if want != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="scopewatch"`)
				d.fail(w, http.StatusUnauthorized, "unauthorized", "missing or wrong bearer token (Authorization: Bearer TOKEN, as set in http.token)")
				return
			}
		}
		h(w, r)
	}
}

type apiError struct {
	Error  string `json:"error"`
	Reason string `json:"reason"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (d *Daemon) fail(w http.ResponseWriter, code int, reason, format string, args ...any) {
	d.metrics.httpErrors.WithLabelValues(reason).Inc()
	writeJSON(w, code, apiError{Error: fmt.Sprintf(format, args...), Reason: reason})
}

type uploadCell struct {
	Box   [4]int  `json:"box"` // x, y, w, h
	P     float64 `json:"p_parasitized"`
	Label string  `json:"label"`
}

type uploadResponse struct {
	Slide       string       `json:"slide"`
	Image       string       `json:"image"`
	Kind        string       `json:"kind"`
	Width       int          `json:"width"`
	Height      int          `json:"height"`
	Cells       int          `json:"cells"`
	Infected    int          `json:"infected"`
	Predictions []uploadCell `json:"predictions"`
	// Rejected are the field's segmented cells the plausibility gate
	// refused: no class, not counted.
	Rejected     []uploadRejected `json:"rejected"`
	ModelVersion string           `json:"model_version"`
	SlideState   slideProgress    `json:"slide_state"`
	Summary      *slideSummary    `json:"summary,omitempty"`
}

type uploadRejected struct {
	Box    [4]int `json:"box"` // x, y, w, h
	Reason string `json:"reason"`
}

type slideProgress struct {
	State    string `json:"state"`
	Images   int    `json:"images"`
	Cells    int    `json:"cells"`
	Infected int    `json:"infected"`
}

func (d *Daemon) handleUpload(w http.ResponseWriter, r *http.Request) {
	cfg := d.config()
	if !d.ready.Load() {
		d.fail(w, http.StatusServiceUnavailable, "not_ready", "the daemon is starting or stopping")
		return
	}
	q := r.URL.Query()
	slide := q.Get("slide")
	if slide == "" {
		slide = cfg.Slides.DefaultID
	}
	if !config.ValidSlideID(slide) {
		d.fail(w, http.StatusBadRequest, "bad_slide", "slide %q is not a slide id: 1-128 characters from A-Z a-z 0-9 . _ -, not starting with a dot", slide)
		return
	}
	kind := q.Get("kind")
	if kind != "" && !slices.Contains(config.ImageKinds, kind) {
		d.fail(w, http.StatusBadRequest, "bad_kind", "kind %q: want crop, field or auto", kind)
		return
	}
	complete := q.Get("complete") == "1" || q.Get("complete") == "true"
	r.Body = http.MaxBytesReader(w, r.Body, cfg.Images.MaxBytes)
	data, filename, err := readUpload(r)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			d.fail(w, http.StatusRequestEntityTooLarge, "too_large", "upload larger than images.max_bytes=%d bytes", cfg.Images.MaxBytes)
			return
		}
		d.fail(w, http.StatusBadRequest, "bad_upload", "%v", err)
		return
	}
	if len(data) == 0 {
		d.fail(w, http.StatusBadRequest, "empty", "empty upload: send the image as the request body or a multipart file part")
		return
	}
	name := q.Get("name")
	if name == "" {
		name = filename
	}
	if name == "" {
		// Named by content, so that a client retrying an upload it never
		// saw answered is told "duplicate" rather than counted twice.
		sum := sha256.Sum256(data)
		name = "upload-" + hex.EncodeToString(sum[:8])
	}
	name = path.Base(strings.ReplaceAll(name, "\\", "/"))
	if name == "." || name == "/" || len(name) > 200 {
		d.fail(w, http.StatusBadRequest, "bad_name", "name %q is not a usable image name", name)
		return
	}
	done := make(chan jobResult, 1)
	if !d.submit(job{slide: slide, name: name, source: "http", kind: kind, data: data, done: func(r jobResult) { done <- r }}) {
		w.Header().Set("Retry-After", "5")
		d.fail(w, http.StatusServiceUnavailable, "queue_full", "%d images queued (images.queue_size); retry later", cfg.Images.QueueSize)
		return
	}
	var res jobResult
	select {
	case res = <-done:
	case <-r.Context().Done():
		return // the client left; the image is still processed
	}
	var bad *badImageError
	switch {
	case errors.As(res.err, &bad):
		d.fail(w, http.StatusUnprocessableEntity, bad.Reason, "%v", res.err)
		return
	case errors.Is(res.err, errSlideComplete):
		d.fail(w, http.StatusConflict, "slide_complete", "%v: its count is final; use a new slide id", res.err)
		return
	case errors.Is(res.err, errDuplicateImage):
		d.fail(w, http.StatusConflict, "duplicate", "%v: give each image of a slide its own name", res.err)
		return
	case res.err != nil:
		d.fail(w, http.StatusInternalServerError, "internal", "%v", res.err)
		return
	}
	resp := uploadResponse{
		Slide: slide, Image: name, Kind: res.an.Kind, Width: res.an.Width, Height: res.an.Height,
		Cells: len(res.an.Cells), ModelVersion: d.model.ModelVersion(), Predictions: []uploadCell{}, Rejected: []uploadRejected{},
		SlideState: slideProgress{State: res.stored.Slide.State, Images: res.stored.Slide.Images, Cells: res.stored.Slide.Cells, Infected: res.stored.Slide.Infected},
		Summary:    res.stored.Completed,
	}
	for _, c := range res.an.Rejected {
		resp.Rejected = append(resp.Rejected, uploadRejected{Box: [4]int{c.Box.Min.X, c.Box.Min.Y, c.Box.Dx(), c.Box.Dy()}, Reason: c.Reason})
	}
	for _, c := range res.an.Cells {
		if c.Parasitized {
			resp.Infected++
		}
		resp.Predictions = append(resp.Predictions, uploadCell{Box: [4]int{c.Box.Min.X, c.Box.Min.Y, c.Box.Dx(), c.Box.Dy()}, P: c.P, Label: c.Label})
	}
	if complete && resp.Summary == nil {
		s, ok, err := d.completeSlide(r.Context(), slide, "request")
		if err != nil {
			d.fail(w, http.StatusInternalServerError, "internal", "complete slide: %v", err)
			return
		}
		if ok {
			resp.Summary = &s
			resp.SlideState.State = "complete"
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// readUpload returns the image bytes: the body, or the first file part of a
// multipart form (preferring a part named "image").
func readUpload(r *http.Request) ([]byte, string, error) {
	ct := r.Header.Get("Content-Type")
	mt, params, _ := mime.ParseMediaType(ct)
	if mt != "multipart/form-data" {
		data, err := io.ReadAll(r.Body)
		return data, "", err
	}
	boundary := params["boundary"]
	if boundary == "" {
		return nil, "", errors.New("multipart upload without a boundary")
	}
	mr := multipart.NewReader(r.Body, boundary)
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil, "", errors.New("multipart upload without a file part (send the image in a part named \"image\")")
		}
		if err != nil {
			return nil, "", fmt.Errorf("malformed multipart upload: %w", err)
		}
		if p.FileName() == "" && p.FormName() != "image" {
			p.Close()
			continue
		}
		data, err := io.ReadAll(p)
		p.Close()
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, "", err
			}
			return nil, "", fmt.Errorf("malformed multipart upload: %w", err)
		}
		return data, p.FileName(), nil
	}
}

func (d *Daemon) handleSlide(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s, ok, err := d.slideSummaryByID(r.Context(), id)
	if err != nil {
		d.fail(w, http.StatusInternalServerError, "internal", "%v", err)
		return
	}
	if !ok {
		d.fail(w, http.StatusNotFound, "no_slide", "no slide %q", id)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (d *Daemon) handleComplete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, _, err := d.completeSlide(r.Context(), id, "request"); err != nil {
		d.fail(w, http.StatusInternalServerError, "internal", "%v", err)
		return
	}
	// Completed now or before: answer with the stored slide either way.
	d.handleSlide(w, r)
}

// slideSummaryByID reads a slide: its stored summary when complete, the
// running counts (with an interval) while open.
func (d *Daemon) slideSummaryByID(ctx context.Context, id string) (slideSummary, bool, error) {
	sl, ok, err := d.db.getSlide(ctx, d.db.db, id)
	if err != nil || !ok {
		return slideSummary{}, ok, err
	}
	if sl.Scores, err = d.db.slideScores(ctx, d.db.db, sl.ID); err != nil {
		return slideSummary{}, false, err
	}
	s, _ := d.summarise(sl, sl.StoppingReason)
	s.State = sl.State
	return s, true, nil
}

func (d *Daemon) handleHealth(w http.ResponseWriter, r *http.Request) {
	if !d.workersAlive(2 * time.Minute) {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "stuck", "detail": "no worker progress for 2 minutes"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "boot": d.boot})
}

func (d *Daemon) handleReady(w http.ResponseWriter, r *http.Request) {
	state, reasons := d.statusState()
	body := map[string]any{"ready": d.ready.Load(), "status": state, "degraded": reasons, "model_version": d.model.ModelVersion(),
		"queue": len(d.queue), "mqtt_connected": d.mq != nil && d.mq.connected()}
	// The broker link is reported, not made a condition of readiness: a
	// device without its broker still classifies, and its results wait in
	// the outbox.
	if v, ok := d.degraded.Load("mqtt_link"); ok {
		body["mqtt_link"] = v
	}
	if err := d.db.db.PingContext(r.Context()); err != nil {
		body["ready"] = false
		body["database"] = err.Error()
	}
	if body["ready"] != true {
		writeJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

func (d *Daemon) handleDriftStatus(w http.ResponseWriter, r *http.Request) {
	if d.drift == nil {
		d.fail(w, http.StatusNotFound, "drift_disabled", "drift detection is disabled (drift.enabled: false)")
		return
	}
	writeJSON(w, http.StatusOK, d.drift.status())
}

// handleDriftAck acknowledges the drift events: the detectors start afresh
// (a persisting drift is then detected again, from empty windows).
func (d *Daemon) handleDriftAck(w http.ResponseWriter, r *http.Request) {
	if d.drift == nil {
		d.fail(w, http.StatusNotFound, "drift_disabled", "drift detection is disabled (drift.enabled: false)")
		return
	}
	by, ok := d.requester(w, r)
	if !ok {
		return
	}
	model, since, ok := d.drift.ack(r.Context(), by)
	if !ok {
		d.fail(w, http.StatusConflict, "drift_not_running", "drift detection is not running (no baseline loaded yet, or the model has none)")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"reset": true, "model_version": model, "cells_since_previous_reset": since})
}

// handleModel is GET /v1/model: the serving model and, with the rollout
// on, the slots, the candidate's stage and its shadow evidence.
func (d *Daemon) handleModel(w http.ResponseWriter, r *http.Request) {
	out := map[string]any{"model_version": d.model.ModelVersion(), "threshold": d.model.threshold(), "rollout": d.ro != nil}
	if d.ro != nil {
		out["state"] = d.ro.state()
	}
	writeJSON(w, http.StatusOK, out)
}

// handleRollback is POST /v1/model/rollback?by=WHO: the previous slot
// serves again, and the version left is never taken again from an offer.
func (d *Daemon) handleRollback(w http.ResponseWriter, r *http.Request) {
	if d.ro == nil {
		d.fail(w, http.StatusNotFound, "rollout_disabled", "the model rollout is disabled (rollout.enabled: false): there is no previous slot")
		return
	}
	by, ok := d.requester(w, r)
	if !ok {
		return
	}
	slot, err := d.ro.rollback(r.Context(), "asked by "+by)
	switch {
	case errors.Is(err, rollout.ErrNoPrevious):
		d.fail(w, http.StatusConflict, "no_previous_model", "no previous model to roll back to (none was promoted on this device, or a candidate now occupies its slot)")
		return
	case err != nil:
		d.fail(w, http.StatusInternalServerError, "rollback_failed", "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"model_version": slot.Version, "slot": slot.Name, "state": d.ro.state()})
}

// requester is who asked, from ?by= ("http" when absent); false when the
// request was answered with an error.
func (d *Daemon) requester(w http.ResponseWriter, r *http.Request) (string, bool) {
	by := r.URL.Query().Get("by")
	if by == "" {
		by = "http"
	}
	if len(by) > 64 {
		d.fail(w, http.StatusBadRequest, "bad_request", "by: at most 64 characters")
		return "", false
	}
	return by, true
}
