//! [`TokenStream`]: what a request produces, as it comes.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::{Event, Usage};
use crate::sample::TokenLogprob;

/// What a sequence has produced so far, shared between the scheduler and
/// the request's [`TokenStream`].
#[derive(Debug, Default)]
pub(crate) struct Produced {
    /// Token ids (end-of-generation tokens excluded).
    pub(crate) ids: Vec<u32>,
    /// Their log-probabilities, when asked for, not yet taken.
    pub(crate) logprobs: Vec<TokenLogprob>,
}

/// Generated text as it comes. Dropping it cancels the request and frees its
/// sequence.
#[derive(Debug)]
pub struct TokenStream {
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
    pub(crate) done: bool,
    pub(crate) produced: Arc<Mutex<Produced>>,
}

impl TokenStream {
    /// The ids of the tokens generated so far (end-of-generation tokens
    /// excluded).
    pub fn token_ids(&self) -> Vec<u32> {
        self.produced
            .lock()
            .map(|p| p.ids.clone())
            .unwrap_or_default()
    }

    /// The log-probabilities of the tokens produced since the last call
    /// (with [`super::OutputOptions::logprobs`]; empty otherwise). Each
    /// token's entry is in place before the text that contains it arrives
    /// as an [`Event::Text`].
    pub fn take_logprobs(&self) -> Vec<crate::sample::TokenLogprob> {
        self.produced
            .lock()
            .map(|mut p| std::mem::take(&mut p.logprobs))
            .unwrap_or_default()
    }

    /// The next event; `None` after `Done` or `Error`.
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let ev = self.rx.recv().await;
        self.done = !matches!(ev, Some(Event::Text(_)));
        ev
    }

    /// Collects the whole text and the usage.
    pub async fn collect_text(mut self) -> Result<(String, Usage), String> {
        let mut text = String::new();
        while let Some(ev) = self.next().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done(u) => return Ok((text, u)),
                Event::Error(e) => return Err(e),
            }
        }
        Err("the engine stopped".into())
    }
}

impl futures_core::Stream for TokenStream {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.done {
            return Poll::Ready(None);
        }
        let p = self.rx.poll_recv(cx);
        if let Poll::Ready(ev) = &p {
            self.done = !matches!(ev, Some(Event::Text(_)));
        }
        p
    }
}
