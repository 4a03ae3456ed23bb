// Package tuning owns hyperparameter studies for retuning a model the way
// the project's seed article prescribes: a study names its parameters with a
// role (scientific: the question being asked; nuisance: tuned for each
// scientific value before values are compared; fixed: held constant and
// recorded as a caveat), searches them in two phases (quasi-random
// exploration, then exploitation), and keeps everything it asks and hears in
// a journal so that a study can be resumed and its report redrawn.
//
// The package is pure Go (no cgo, directly or through another package) so
// that studies and their tests run anywhere.
//
// # What is here so far
//
// The study file (Study, Decode, Load): YAML decoded strictly, every field
// validated with an error that names it; the search space (Space), which
// maps the searched parameters to the unit cube and back, with log scales
// and an equal share of each coordinate for every int or categorical value;
// the trial protocol (RunCommand, below); the journal (Journal); the
// exploration sequence (Halton, scrambled and seeded); and the Runner, which
// runs a study's trials in parallel into a study folder, journals every ask
// before the trial starts and every tell when it ends, and resumes from the
// journal: finished trials are kept, interrupted ones rerun with the same
// parameters and seed. Suggestions depend on the trial number and the seed
// only, never on how many trials run at once.
//
// Not built yet (see the project's tuning issue): Bayesian exploitation
// (until it lands the Runner continues the quasi-random sequence for the
// whole budget, and journals those trials as exploration), pruning, the
// finalists' replicates, the built-in head trainer, the playbook checks, the
// plots and report, and the command line.
//
// # Study file
//
//	name: optimizer-vs-lr
//	objective:
//	  command: ["python3", "trial.py"]   # or builtin: head
//	  metric: val_loss                   # read from the trial's JSON lines
//	  direction: minimize                # or maximize
//	parameters:
//	  - {name: optimizer, role: scientific, type: categorical, values: [adam, sgd]}
//	  - {name: lr, role: nuisance, type: float, min: 1e-4, max: 1e-1, log: true}
//	  - {name: dropout, role: nuisance, type: float, min: 0, max: 0.5}
//	  - {name: batch_size, role: fixed, value: 248}
//	budget: {trials: 60, explore: 16, parallel: 2, max_epochs: 10}
//	pruning: {method: asha, grace_epochs: 1, reduction: 3}   # or none / hyperband
//	replicates: {finalists: 3, seeds: 3}
//	seed: 1
//
// A fixed parameter takes a value and no type. A searched parameter
// (scientific or nuisance) is float (min, max, optionally log), int (min,
// max, optionally log) or categorical (values). The batch size is never
// searched: the seed article fixes it once per dataset by throughput, and
// tuning it confounds every other comparison, so a searched parameter named
// batch_size is refused.
//
// # Trial protocol
//
// objective.command runs once per trial, in the trial's own folder, with one
// JSON object on stdin:
//
//	{"trial": N, "seed": S, "params": {...}, "max_epochs": E, "dir": "<trial folder>"}
//
// params holds every parameter, fixed ones included. The command prints JSON
// lines on stdout, one per epoch, for example
//
//	{"epoch": 1, "val_loss": 0.41, "train_loss": 0.52}
//
// Numeric keys feed pruning and the curves; other keys are ignored. The
// metric of the last line that carries it is the trial's result; a bare
// {"value": v} with metric: value is the minimal form. A non-zero exit, a
// stdout line that is not a JSON object (the trial is stopped at once), or no
// line with the metric fails the trial: it is kept as failed, with the
// reason, never dropped. A trial the pruner stops gets SIGTERM, then SIGKILL
// after 5 s, and is recorded as pruned with its last value. Stderr goes to
// stderr.log in the trial's folder.
package tuning
