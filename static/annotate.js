/* The annotator workbench: keyboard shortcuts, ranking by drag or keys, the guidelines dialog.
 *
 * The server renders every page and every answer form so that they work without this file; this only adds
 * keys and drag and drop on top. htmx swaps a new #task in after each submit or skip, so everything here
 * either listens on the document or is set up again for the new region (see the htmx:afterSwap handler).
 */
(function () {
  "use strict";

  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const LEGEND_KEY = "arbiter:legend-hidden";

  function answerForm() {
    return document.getElementById("answer");
  }

  // --- Completeness: the inline message instead of sending an incomplete answer ---------------------------

  function problemWith(form) {
    const kind = form.dataset.kind;
    const keys = `1–${form.dataset.digitKeys}`;
    if (kind === "rating" && !$('input[name="score"]:checked', form)) {
      return `Choose a score first (keys ${keys}).`;
    }
    if (kind === "pairwise" && !$('input[name="preference"]:checked', form)) {
      return "Choose which response is better, or a tie, first (← → T or 1–5).";
    }
    if (kind === "write" && !$("#written", form).value.trim()) {
      return "Write the answer first (W goes to the editor).";
    }
    if (kind === "ranking" && $$('select[name^="rank-"]', form).some((select) => !select.value)) {
      return `Give every response a rank first (keys ${keys}, or move them with ⇧↑ ⇧↓).`;
    }
    return "";
  }

  function showProblem(form, text) {
    const line = $("#answer-problem", form);
    line.textContent = text;
    line.hidden = !text;
  }

  function answerChanged(form) {
    if (!problemWith(form)) showProblem(form, "");
    saveDraft(form);
  }

  // --- Drafts: a half-done answer survives a reload, kept per assignment until it is submitted or skipped ---

  // The assignment whose draft this page holds: when another task is swapped in, that one was answered or
  // skipped, and its draft goes.
  let draftShown = null;

  function saveDraft(form) {
    const values = {};
    for (const [name, value] of new FormData(form)) {
      if (name !== "csrfmiddlewaretoken") (values[name] ||= []).push(value);
    }
    try {
      localStorage.setItem(form.dataset.draft, JSON.stringify({ expires: form.dataset.expires, values }));
    } catch {
      // Storage full or refused (private mode): the answer still works, it just does not outlive the page.
    }
  }

  function restoreDraft(form) {
    const draft = JSON.parse(localStorage.getItem(form.dataset.draft) || "null");
    if (!draft) return;
    for (const field of form.elements) {
      if (!field.name || field.name === "csrfmiddlewaretoken") continue;
      const values = draft.values[field.name] || [];
      if (field.type === "radio" || field.type === "checkbox") field.checked = values.includes(field.value);
      else if (field.matches("select, textarea")) field.value = values[0] || "";
    }
    // A better answer restored is one that will be sent: it is shown, not left in a closed box.
    const correction = $("#correction", form);
    if (correction && correction.value) $("#correction-box", form).open = true;
  }

  // Drafts of leases that have run out are of no more use (the task may go to someone else).
  function dropExpiredDrafts() {
    const now = Date.now();
    for (const key of Object.keys(localStorage)) {
      if (!key.startsWith("arbiter:draft:")) continue;
      const draft = JSON.parse(localStorage.getItem(key) || "null");
      if (!draft || !(Date.parse(draft.expires) > now)) localStorage.removeItem(key);
    }
  }

  function setUpDraft(form) {
    const key = form ? form.dataset.draft : null;
    if (draftShown && draftShown !== key) localStorage.removeItem(draftShown);
    draftShown = key;
    dropExpiredDrafts();
    // A refused answer comes back with what was sent already filled in by the server.
    if (form && $("#answer-problem", form).hidden) restoreDraft(form);
  }

  // Capture phase on the document runs before htmx's own submit listener on the form, so stopping the
  // event here keeps both htmx and the browser from sending an incomplete answer (Enter, click or key).
  document.addEventListener(
    "submit",
    (event) => {
      const form = event.target;
      if (form.id !== "answer") return;
      const problem = problemWith(form);
      if (problem) {
        event.preventDefault();
        event.stopImmediatePropagation();
        showProblem(form, problem);
      }
    },
    true,
  );

  document.addEventListener("input", (event) => {
    const form = event.target.closest("#answer");
    if (form && event.target.matches("textarea")) saveDraft(form);
  });

  document.addEventListener("change", (event) => {
    const form = event.target.closest("#answer");
    if (!form) return;
    if (event.target.id === "show-preview" && event.target.checked) renderPreview(form);
    if (event.target.matches('select[name^="rank-"]')) {
      sortRanking(form);
      event.target.focus();
    }
    answerChanged(form);
  });

  // --- Keys -----------------------------------------------------------------------------------------------

  // "Digit3" or "Numpad3" → 3: the code, not the key, because Shift+3 types "#" (or "§", layout depending).
  function digitOf(event) {
    const match = /^(?:Digit|Numpad)([1-9])$/.exec(event.code);
    return match ? Number(match[1]) : null;
  }

  function isTyping(target) {
    return Boolean(target.closest && target.closest("textarea, select, input:not([type=radio]):not([type=checkbox])"));
  }

  function pick(form, name, index) {
    const input = $$(`input[name="${name}"]`, form)[index];
    if (!input) return false;
    input.checked = input.type === "checkbox" ? !input.checked : true;
    answerChanged(form);
    return true;
  }

  // Focus a text box with the caret at its end, where writing goes on.
  function focusText(box) {
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    return true;
  }

  // The better answer starts as the rated response, so that correcting it is editing it.
  function openCorrection(form) {
    const box = $("#correction-box", form);
    if (!box) return false;
    box.open = true;
    const text = $("#correction", form);
    const original = $("#correction-original", form);
    if (!text.value && original) text.value = original.value;
    focusText(text);
    text.scrollIntoView({ block: "nearest" });
    return true;
  }

  // The preview is a checkbox that CSS reads (#task:has(#show-preview:checked)); htmx keeps it up to date.
  function togglePreview(form) {
    const box = document.getElementById("show-preview");
    if (!box) return false;
    box.checked = !box.checked;
    if (box.checked) renderPreview(form);
    else focusText($("#written", form));
    return true;
  }

  // The preview is the server's rendering of the editor's text (htmx, on the editor's "refresh"), asked for only
  // as it is shown: the editor and the preview take turns, so nothing typed meanwhile goes unrendered.
  function renderPreview(form) {
    if (window.htmx) window.htmx.trigger($("#written", form), "refresh");
  }

  const kindKeys = {
    write(event, form) {
      const key = event.key.toLowerCase();
      if (event.shiftKey) return false;
      if (key === "w") return focusText($("#written", form));
      if (key === "p") return togglePreview(form);
      return false;
    },

    rating(event, form) {
      if (event.key.toLowerCase() === "w" && !event.shiftKey) return openCorrection(form);
      const digit = digitOf(event);
      if (digit === null) return false;
      return event.shiftKey ? pick(form, "labels", digit - 1) : pick(form, "score", digit - 1);
    },

    pairwise(event, form) {
      // The five radios are, in order: A much better, A better, tie, B better, B much better.
      if (event.key === "ArrowLeft") return pick(form, "preference", event.shiftKey ? 0 : 1);
      if (event.key === "ArrowRight") return pick(form, "preference", event.shiftKey ? 4 : 3);
      const key = event.key.toLowerCase();
      if (key === "t") return pick(form, "preference", 2);
      if (key === "x") return pick(form, "both_bad", 0);
      const digit = digitOf(event);
      return digit !== null && digit <= 5 && !event.shiftKey && pick(form, "preference", digit - 1);
    },

    ranking(event, form) {
      const responses = rankedItems(form);
      const current = document.activeElement && document.activeElement.closest(".ranking > .response");
      const up = event.key === "ArrowUp" || event.key.toLowerCase() === "k";
      const down = event.key === "ArrowDown" || event.key.toLowerCase() === "j";
      if (up || down) {
        if (!current) {
          focusResponse(responses[0]);
        } else if (event.shiftKey) {
          moveResponse(form, current, up ? -1 : 1);
        } else {
          const index = responses.indexOf(current) + (up ? -1 : 1);
          focusResponse(responses[Math.max(0, Math.min(responses.length - 1, index))]);
        }
        return true;
      }
      if (!current) return false;
      if (event.key === "=") {
        toggleTie(form, current);
        return true;
      }
      const digit = digitOf(event);
      if (digit === null || event.shiftKey || digit > responses.length) return false;
      rankResponse(form, current, digit);
      return true;
    },
  };

  function commonKey(event, form) {
    const key = event.key === "?" ? "?" : event.key.toLowerCase();
    if (key === "g") return openGuidelines();
    if (key === "?") return toggleLegend();
    if (!form) return false;
    if (key === "enter") {
      // Enter on a button or link is that button's or link's own business (Skip, Guidelines).
      if (event.target.closest("button, a")) return false;
      form.requestSubmit();
      return true;
    }
    if (key === "s" && !event.shiftKey) {
      // No skip when changing an answer from "my work" (its page has no skip form).
      const skip = document.getElementById("skip");
      if (!skip) return false;
      skip.requestSubmit();
      return true;
    }
    if (key === "c" && !event.shiftKey) {
      $("#comment", form).focus();
      return true;
    }
    if (key === "r" && !event.shiftKey) return toggleRawText();
    return false;
  }

  // The switch is a checkbox that CSS reads (#task:has(#show-raw:checked)): the key only ticks it.
  function toggleRawText() {
    const box = document.getElementById("show-raw");
    if (!box) return false;
    box.checked = !box.checked;
    return true;
  }

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.isComposing) return;
    // The open dialog is modal: Esc closes it (natively) and no task key acts behind it.
    if ($("dialog[open]")) return;
    const form = answerForm();
    const target = event.target;
    if (isTyping(target)) {
      if (!form) return;
      if (event.key === "Escape") {
        event.preventDefault();
        target.blur();
        focusTask({ scroll: false, from: target });
      } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && target.form === form) {
        event.preventDefault();
        form.requestSubmit();
      }
      return;
    }
    // Leave the browser's and the system's own shortcuts alone.
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const kindKey = form && kindKeys[form.dataset.kind];
    if ((kindKey && kindKey(event, form)) || commonKey(event, form)) {
      event.preventDefault();
    }
  });

  // --- Ranking: the rank selects are what the form posts; the list's order and tie marks follow them -------

  function rankedItems(form) {
    return $$(".ranking > .response", form);
  }

  function rankSelect(item) {
    return $('select[name^="rank-"]', item);
  }

  function focusResponse(item) {
    if (!item) return;
    item.focus({ preventScroll: true });
    item.scrollIntoView({ block: "nearest" });
  }

  // Ranked first by rank, unranked last, each in its current place otherwise; then mark the ties.
  function sortRanking(form) {
    const list = $(".ranking", form);
    const rank = (item) => Number(rankSelect(item).value) || Number.POSITIVE_INFINITY;
    const order = rankedItems(form).map((item, index) => ({ item, index }));
    order.sort((a, b) => rank(a.item) - rank(b.item) || a.index - b.index);
    for (const { item } of order) list.appendChild(item);
    markTies(form);
  }

  function markTies(form) {
    let above = "";
    for (const item of rankedItems(form)) {
      const rank = rankSelect(item).value;
      item.classList.toggle("tied", Boolean(rank) && rank === above);
      above = rank;
    }
  }

  // Neighbours with the same rank make one group (a tie); an unranked response is a group of its own.
  function rankGroups(form) {
    const groups = [];
    let above = "";
    for (const item of rankedItems(form)) {
      const rank = rankSelect(item).value;
      if (rank && rank === above) groups[groups.length - 1].push(item);
      else groups.push([item]);
      above = rank;
    }
    return groups;
  }

  // Moving or tying ranks every response as the list stands, in competition ranking: two tied at the
  // top are both 1 and the next is 3, which is what "equal numbers are a tie" reads as.
  function writeGroups(form, groups, focused) {
    const list = $(".ranking", form);
    let rank = 1;
    for (const group of groups) {
      for (const item of group) {
        rankSelect(item).value = String(rank);
        list.appendChild(item);
      }
      rank += group.length;
    }
    markTies(form);
    answerChanged(form);
    // Moving an element in the document drops its focus; give it back so the keys go on working.
    focusResponse(focused);
  }

  function removeFromGroups(groups, item) {
    const index = groups.findIndex((group) => group.includes(item));
    const group = groups[index];
    group.splice(group.indexOf(item), 1);
    if (!group.length) groups.splice(index, 1);
    return index;
  }

  function moveResponse(form, item, step) {
    const groups = rankGroups(form);
    const index = groups.findIndex((group) => group.includes(item));
    if (groups[index].length > 1) {
      // A tied response leaves its tie for just above or just below it.
      removeFromGroups(groups, item);
      groups.splice(step < 0 ? index : index + 1, 0, [item]);
    } else if (index + step >= 0 && index + step < groups.length) {
      groups.splice(index, 1);
      groups.splice(index + step, 0, [item]);
    }
    writeGroups(form, groups, item);
  }

  // A number moves the response to that rank and the others shift to make room: only "=" ties. A tie stays
  // whole: a rank inside one puts the response just past it, in the direction it was moving.
  function rankResponse(form, item, rank) {
    const wanted = rank - 1; // responses above it
    const before = rankedItems(form).indexOf(item);
    const groups = rankGroups(form);
    removeFromGroups(groups, item);
    const above = [0]; // above[i]: the responses above a place just before groups[i]
    for (const group of groups) above.push(above[above.length - 1] + group.length);
    let place = above.indexOf(wanted);
    if (place < 0) {
      place = wanted < before ? above.findLastIndex((n) => n < wanted) : above.findIndex((n) => n > wanted);
    }
    groups.splice(place, 0, [item]);
    writeGroups(form, groups, item);
  }

  function toggleTie(form, item) {
    const groups = rankGroups(form);
    const index = groups.findIndex((group) => group.includes(item));
    const group = groups[index];
    const position = group.indexOf(item);
    if (position > 0) {
      // Already tied with the one above: untie here, leaving the order as it is.
      groups.splice(index, 1, group.slice(0, position), group.slice(position));
    } else if (index > 0) {
      groups.splice(index - 1, 2, groups[index - 1].concat(group));
    } else {
      return;
    }
    writeGroups(form, groups, item);
  }

  // Drag by a response's bar (dragging the whole card would stop its text from being selectable).
  function setUpDrag(form) {
    const list = $(".ranking", form);
    if (!list || list.dataset.dragReady) return;
    list.dataset.dragReady = "1";
    let dragged = null;
    const clearMarks = () => $$(".drop-before, .drop-after", list).forEach((item) => item.classList.remove("drop-before", "drop-after"));
    const dropBefore = (event, item) => {
      const box = item.getBoundingClientRect();
      return event.clientY < box.top + box.height / 2;
    };
    for (const bar of $$(".rank-bar", list)) bar.draggable = true;

    list.addEventListener("dragstart", (event) => {
      dragged = event.target.closest(".response");
      if (!dragged) return;
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", dragged.dataset.responseId);
      event.dataTransfer.setDragImage(dragged, 16, 16);
      dragged.classList.add("dragging");
    });
    list.addEventListener("dragover", (event) => {
      const over = event.target.closest(".response");
      if (!dragged || !over) return;
      event.preventDefault();
      clearMarks();
      if (over !== dragged) over.classList.add(dropBefore(event, over) ? "drop-before" : "drop-after");
    });
    list.addEventListener("drop", (event) => {
      const over = event.target.closest(".response");
      if (!dragged || !over) return;
      event.preventDefault();
      if (over !== dragged) {
        const groups = rankGroups(form);
        removeFromGroups(groups, dragged);
        const index = groups.findIndex((group) => group.includes(over));
        groups.splice(dropBefore(event, over) ? index : index + 1, 0, [dragged]);
        writeGroups(form, groups, dragged);
      }
    });
    list.addEventListener("dragend", () => {
      clearMarks();
      if (dragged) dragged.classList.remove("dragging");
      dragged = null;
    });
  }

  // --- Guidelines and legend ------------------------------------------------------------------------------

  // A modal <dialog> gives the focus back to where it was when it closes (test_task_page_layout.py checks).
  function openGuidelines() {
    const dialog = document.getElementById("guidelines");
    if (!dialog) return false;
    dialog.showModal();
    return true;
  }

  document.addEventListener("click", (event) => {
    if (event.target.closest("[data-open-guidelines]") && openGuidelines()) event.preventDefault();
  });

  // Opened by mouse as by key: the better answer starts as the response.
  document.addEventListener(
    "toggle",
    (event) => {
      if (event.target.id === "correction-box" && event.target.open) {
        const form = answerForm();
        const text = form && $("#correction", form);
        const original = form && $("#correction-original", form);
        if (text && !text.value && original) text.value = original.value;
      }
    },
    true,
  );

  function toggleLegend() {
    const legend = document.getElementById("legend");
    if (!legend) return false;
    legend.hidden = !legend.hidden;
    sessionStorage.setItem(LEGEND_KEY, legend.hidden ? "1" : "");
    return true;
  }

  // --- Setting up each task, on load and after every swap ------------------------------------------------

  function focusTask({ scroll, from } = {}) {
    const task = document.getElementById("task");
    if (!task) return;
    const form = answerForm();
    // A write task starts in its editor: writing is the task (Esc leaves it, and comes back to the task).
    const editor = !from && form && $("#written", form);
    if (editor) {
      focusText(editor);
      editor.scrollIntoView({ block: "nearest" });
      if (scroll) task.scrollIntoView({ block: "start" });
      return;
    }
    const target = (from && from.closest(".ranking > .response")) || (form && $(".ranking > .response", form)) || task;
    target.focus({ preventScroll: true });
    // A new task starts at its top: the prompt is what to read first.
    if (scroll) task.scrollIntoView({ block: "start" });
  }

  function setUpTask() {
    const task = document.getElementById("task");
    if (!task) return;
    const legend = document.getElementById("legend");
    if (legend) legend.hidden = sessionStorage.getItem(LEGEND_KEY) === "1";
    const form = answerForm();
    setUpDraft(form);
    if (form && form.dataset.kind === "ranking") {
      sortRanking(form);
      setUpDrag(form);
    }
    const problem = form && $("#answer-problem", form);
    if (problem && !problem.hidden) {
      // The answer came back refused: stay at the form, where the message is.
      form.focus({ preventScroll: true });
      problem.scrollIntoView({ block: "nearest" });
    } else {
      focusTask({ scroll: true });
    }
  }

  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.target.id !== "task") return;
    setUpTask();
  });

  // Screen readers hear which task came in; the live region sits outside the swapped one, so it is there to notice
  // the change. After the settle, not the swap: until then htmx keeps the old region's attributes on the new one.
  document.addEventListener("htmx:afterSettle", () => {
    const announcer = document.getElementById("task-announcer");
    const task = document.getElementById("task");
    if (announcer && task) announcer.textContent = task.dataset.announce || "";
  });

  // A response that is not a task region is a page: most likely the login page after the session ended.
  // Reloading shows it properly, and brings the annotator back to this task after logging in.
  document.addEventListener("htmx:beforeSwap", (event) => {
    const { target, xhr, serverResponse } = event.detail;
    if (target.id === "task" && xhr.status === 200 && !/\bid="task"/.test(serverResponse)) {
      event.detail.shouldSwap = false;
      window.location.reload();
    }
  });

  function reportFailure(text) {
    const form = answerForm();
    if (form) showProblem(form, text);
  }
  document.addEventListener("htmx:responseError", (event) => {
    reportFailure(`The server could not take that (error ${event.detail.xhr.status}); nothing was saved. Reload the page and try again.`);
  });
  document.addEventListener("htmx:sendError", () => {
    reportFailure("Could not reach the server; nothing was saved. Check the connection and press Enter again.");
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUpTask);
  } else {
    setUpTask();
  }
})();
